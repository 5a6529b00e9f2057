"""CPU training on glibc: freed memory stays in the heap for the next step instead of going back to the OS.

glibc's malloc maps a block above its mmap threshold (128 KiB at first, raised to the size of each mapped block
freed, up to 32 MiB) with a fresh ``mmap`` and unmaps it when freed, and it trims free memory at the top of the
heap beyond twice that threshold. A training step's large tensors (the demo CPT's logits: 2,032 x 4,000 floats,
32.5 MB, with their gradient and the log-softmax's) are therefore mapped or grown anew, and every 4 KiB page of
them faulted in again, step after step: 6,000-21,000 page faults a step, 10-15% of the demo CPT step
(BENCHMARKS "Against LLaMA-Factory"). Fixing the two thresholds (``mallopt``) at 32 MiB and 256 MiB makes every
block below 32 MiB come from the heap and keeps up to 256 MiB of freed memory at its top, so the next step reuses
it. The numbers computed are the same; the cost is a few tens of MB of peak RSS (DPO on the demo: +10-20 MB).

Applied by a process that trains on the CPU, when ``train.keep_freed_memory`` is on (the default). Elsewhere
(GPUs, musl, macOS) nothing changes.
"""

from __future__ import annotations

import ctypes
import sys

_M_TRIM_THRESHOLD = -1  # mallopt parameters, from glibc's <malloc.h>
_M_MMAP_THRESHOLD = -3
_MMAP_THRESHOLD = 32 * 2**20  # the largest glibc takes: blocks below it come from the heap
_TRIM_THRESHOLD = 256 * 2**20  # free memory at the heap's top is kept up to this

_kept = False


def keep_freed_memory() -> bool:
    """Make glibc keep freed blocks in the heap from now on; True when this process does (glibc only)."""
    global _kept
    if not _kept:
        libc = _glibc()
        _kept = bool(
            libc
            and libc.mallopt(_M_MMAP_THRESHOLD, _MMAP_THRESHOLD)
            and libc.mallopt(_M_TRIM_THRESHOLD, _TRIM_THRESHOLD)
        )
    return _kept


def freed_memory_kept() -> bool:
    """Whether this process keeps freed memory in its heap (recorded in each stage's metrics)."""
    return _kept


def keep_freed_memory_for_training(enabled: bool) -> bool:
    """``train.keep_freed_memory`` for a process about to train: applied only when it trains on the CPU."""
    import torch

    return enabled and not torch.cuda.is_available() and keep_freed_memory()


def _glibc():
    if not sys.platform.startswith("linux"):
        return None
    libc = ctypes.CDLL(None)  # the C library this process already runs on
    return libc if hasattr(libc, "gnu_get_libc_version") and hasattr(libc, "mallopt") else None
