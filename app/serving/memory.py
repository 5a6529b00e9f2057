"""What the model processes hold: weight bytes (each tensor's storage once, mapped cache files apart) and a
process's own memory, for the pool's reports, the tests and ``benchmarks/bench_serving.py``."""

from __future__ import annotations

import torch


def memory_of(pid: int | str = "self") -> dict[str, int]:
    """A process's resident set ("rss") and the part of it no other process shares ("private"), in bytes
    (Linux /proc; zeros elsewhere)."""
    fields = {}
    try:
        with open(f"/proc/{pid}/smaps_rollup", encoding="ascii") as smaps:
            for line in smaps:
                name, value, *_ = line.split() + [""]
                if value.isdigit():
                    fields[name.rstrip(":")] = int(value) * 1024
    except OSError:
        pass
    return {"rss": fields.get("Rss", 0), "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer tensor (shared storage once)."""
    return weight_bytes_by_origin(model, {})[0]


def weight_bytes_by_origin(model: torch.nn.Module, mapped: dict[int, str]) -> tuple[int, dict[str, int]]:
    """:func:`weight_bytes` split into the process's own tensors and those mapped from each cache file
    (``mapped``: data pointer -> file)."""
    own, files, seen = 0, {}, set()
    for tensor in list(model.parameters()) + list(model.buffers()):
        storage = tensor.untyped_storage()
        if storage.data_ptr() in seen:
            continue
        seen.add(storage.data_ptr())
        if storage.data_ptr() in mapped:
            files[mapped[storage.data_ptr()]] = files.get(mapped[storage.data_ptr()], 0) + storage.nbytes()
        else:
            own += storage.nbytes()
    return own, files


def mapped_files(memory: list[dict]) -> dict[str, int]:
    """Cache file -> bytes of it mapped, over the model processes' reports
    (:meth:`app.serving.pool.ModelPool.worker_memory`; each file once)."""
    files: dict[str, int] = {}
    for m in memory:
        for file, size in m["mapped"].items():
            files[file] = max(files.get(file, 0), size)
    return files
