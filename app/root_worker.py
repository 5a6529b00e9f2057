"""One full model of the model pool in a process of its own, with its LoRA adapters.

The pool (:mod:`app.model_pool`) starts a worker process per distinct full model and talks to it over
a pipe. Panels on different full models (a run's base and its cpt, with sft and dpo riding on cpt)
then really generate at the same time on separate cores, which threads of one Python process cannot
do when the models are small and each step is mostly interpreter work. The worker owns the model
(:class:`app.multi_lora.MultiLora`) and the sampling; the pool owns tokenizers, text and locks, and
sends token ids in and receives token ids back.

Requests, one at a time, each answered by ``("ok", value)`` or ``("error", line)``:

- ``("attach", name, path)``: load the PEFT LoRA adapter in ``path`` as ``name``;
- ``("generate", rows, decoding, pad_id, eos_ids)``: rows are ``(adapter names, prompt ids)``; streams
  ``("tokens", [[one id per row] per step])`` before its ``("ok", None)``: the first step at once, later
  ones gathered for up to ``STREAM_INTERVAL_S``;
- ``("logits", adapter names, ids)``: the next-token logits after ``ids``;
- ``("memory",)``: bytes of the distinct weight tensors held, those mapped from a cache file by file (other
  workers may map the same file) and the rest as the worker's own, and the process's own memory (pages
  shared with no other process);
- ``("stop",)``: exit.

The first message after start is ``("ok", context length or None)`` once the model is loaded, or
``("error", line)``.
"""

from __future__ import annotations

import ctypes
import math
import multiprocessing
import os
import time
from multiprocessing.connection import Connection
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from app.multi_lora import MultiLora
from app.shared_weights import DeltaMismatch, hold_as_delta, map_weights
from training.errors import UserError


def describe_error(error: BaseException) -> str:
    """One line for a panel: a user error as is, anything else with its type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, UserError):
        return text
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


class WorkerGone(UserError):
    """The worker process ended (killed, out of memory, crashed); its root is loaded again on next use."""


class RootWorker:
    """The pool's handle on one worker process; the caller serialises requests (the root's lock)."""

    def __init__(self, path: str, device: str, dtype: torch.dtype, threads: int, trust_remote_code: bool,
                 setting: str, cpus: list[int] | None = None, cache_dir: str | None = None,
                 reference: str | None = None) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["app._worker_preload"])  # libraries imported once, then forked
        self.path = path
        self.cancel = context.Event()  # set by the pool to stop the current generation early
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=serve, args=(child, self.cancel, path, device, str(dtype).removeprefix("torch."), threads,
                                trust_remote_code, setting, cpus, cache_dir, reference),
            name=f"chimed-model:{path}", daemon=True)
        self.process.start()
        child.close()
        try:
            self.context = self._reply()  # the model is loaded (or why not): its context length
        except BaseException:
            self.close()
            raise

    def request(self, *message):
        """Send one request and return its value; a worker error is raised as a :class:`UserError`."""
        self._send(message)
        return self._reply()

    def generate(self, rows, decoding: dict, pad_id: int, eos_ids: list[int], on_tokens) -> None:
        """Stream one batch: ``on_tokens(steps)`` with the steps since the last call, one id per row each.

        Should ``on_tokens`` fail, the generation is stopped and its remaining messages read before the
        error is raised, so the next request gets its own answer.
        """
        failed: list[BaseException] = []

        def receive(steps) -> None:
            if not failed:
                try:
                    on_tokens(steps)
                except Exception as err:  # noqa: BLE001 - raised once the worker has finished
                    failed.append(err)
                    self.cancel.set()

        self.cancel.clear()
        self._send(("generate", rows, decoding, pad_id, eos_ids))
        self._reply(receive)
        if failed:
            raise failed[0]

    def close(self) -> None:
        if self.process.is_alive():
            try:
                self._conn.send(("stop",))
            except OSError:
                pass
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and not self._conn.closed

    def _send(self, message) -> None:
        try:
            self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _reply(self, on_tokens=None):
        while True:
            try:
                kind, value = self._conn.recv()
            except (EOFError, OSError):
                raise self._gone() from None
            if kind == "tokens":
                on_tokens(value)
            elif kind == "ok":
                return value
            else:
                raise UserError(value)

    def _gone(self) -> WorkerGone:
        self.process.join(timeout=5)
        return WorkerGone(f"the process serving {self.path} stopped (exit code {self.process.exitcode}); "
                          "it is loaded again for the next question")


# --- in the worker process -------------------------------------------------------------------------


def serve(conn: Connection, cancel, path: str, device: str, dtype: str, threads: int, trust_remote_code: bool,
          setting: str, cpus: list[int] | None, cache_dir: str | None = None, reference: str | None = None) -> None:
    """The worker's loop: load the model, then answer requests until ``stop`` or the pool goes away.

    ``cpus``: the cores this worker keeps to. Woken by a request, a worker then starts on its own core
    at once instead of queueing behind the other workers on the core it last ran on (2-5 ms on a
    2-core machine, BENCHMARKS.md "Serving"). ``cache_dir`` (CPU): the weights are mapped from a file
    there, shared with the other workers (:mod:`app.shared_weights`); ``reference``: the full model
    ``path`` was trained from, whose mapped weights plus an 8-bit difference then hold it.
    """
    if threads > 0 and not device.startswith("cuda"):
        torch.set_num_threads(threads)
    keep_freed_memory()
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        model, mapped = load_root(path, getattr(torch, dtype), trust_remote_code, setting, cache_dir, reference)
        lora = MultiLora(model.to(device).eval())
    except Exception as err:  # noqa: BLE001 - reported to the pool as the load's answer
        conn.send(("error", describe_error(err)))
        return
    conn.send(("ok", getattr(model.config, "max_position_embeddings", None)))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return  # the pool is gone
        if message[0] == "stop":
            return
        try:
            conn.send(("ok", handle(lora, message, conn, cancel, mapped)))
        except Exception as err:  # noqa: BLE001 - one failed request does not end the worker
            conn.send(("error", describe_error(err)))


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 64 MiB for reuse instead of unmapping them.

    A model held as a difference (:mod:`app.shared_weights`) builds each weight matrix anew in every
    forward pass; returned to the system and mapped again each time, those blocks cost a page fault per
    4 KiB page, which made a forward pass twice as slow (5.4 against 3.3 ms on the demo's cpt).
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc: nothing to tune
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 64 << 20)
    libc.mallopt(m_trim_threshold, 128 << 20)


def load_root(path: str, dtype: torch.dtype, trust_remote_code: bool, setting: str, cache_dir: str | None,
              reference: str | None) -> tuple[torch.nn.Module, dict[int, str]]:
    """The model in ``path`` and, when mapped, ``{data pointer: file}`` of its mapped tensors."""
    from training.modeling import load_causal_lm

    def load(where: str) -> torch.nn.Module:
        return load_causal_lm(where, trust_remote_code=trust_remote_code, dtype=dtype, setting=setting)

    model = load(reference or path)
    if cache_dir is None:
        return model, {}
    file, pointers = map_weights(model, reference or path, Path(cache_dir), dtype)
    if reference:
        try:
            return hold_as_delta(model, load(path)), dict.fromkeys(pointers, str(file))
        except DeltaMismatch:  # not trained from it after all (another architecture): held whole
            model = load(path)
            file, pointers = map_weights(model, path, Path(cache_dir), dtype)
    return model, dict.fromkeys(pointers, str(file))


def cpu_slots(threads: int) -> list[list[int]]:
    """This process's cores cut into groups of ``threads`` (one group per worker, taken in turn);
    empty where cores cannot be chosen (not Linux) or torch picks the threads (``threads`` 0)."""
    if threads <= 0 or not hasattr(os, "sched_getaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if threads >= len(cores):
        return [cores]
    return [cores[i:i + threads] for i in range(0, len(cores) - threads + 1, threads)]


def handle(lora: MultiLora, message: tuple, conn: Connection, cancel, mapped: dict[int, str]):
    kind, *args = message
    device = next(lora.model.parameters()).device
    if kind == "attach":
        lora.attach(*args)
        return None
    if kind == "memory":
        own, files = weight_bytes_by_origin(lora.model, mapped)
        return {"weights": own + sum(files.values()), "own": own, "mapped": files, "private": memory_of()["private"],
                "cuda": torch.cuda.memory_allocated() if device.type == "cuda" else None}
    if kind == "logits":
        adapters, ids = args
        lora.route([tuple(adapters)])
        with torch.inference_mode():
            return lora.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
    if kind == "generate":
        return generate(lora, *args, device=device, send=lambda steps: conn.send(("tokens", steps)),
                        cancelled=cancel.is_set)
    raise ValueError(f"unknown request {kind!r}")


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
    return {"rss": fields.get("Rss", 0),
            "private": fields.get("Private_Clean", 0) + fields.get("Private_Dirty", 0)}


def weight_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter and buffer tensor (shared storage once)."""
    return weight_bytes_by_origin(model, {})[0]


def weight_bytes_by_origin(model: torch.nn.Module, mapped: dict[int, str]) -> tuple[int, dict[str, int]]:
    """:func:`weight_bytes` split into the worker's own tensors and those mapped from each cache file."""
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


def generate(lora: MultiLora, rows: list, decoding: dict, pad_id: int, eos_ids: list[int], *, device: torch.device,
             send, cancelled) -> None:
    """One left-padded batch, row i through the adapters ``rows[i][0]``, each row sampled with its own seed."""
    model = lora.model
    width = max(len(ids) for _, ids in rows)
    input_ids = torch.tensor([[pad_id] * (width - len(ids)) + list(ids) for _, ids in rows], device=device)
    attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, ids in rows], device=device)
    config = GenerationConfig(max_new_tokens=decoding["max_new_tokens"], do_sample=False, pad_token_id=pad_id,
                              eos_token_id=eos_ids or None)
    lora.route([tuple(names) for names, _ in rows])
    with torch.inference_mode():
        model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
                       logits_processor=LogitsProcessorList([SeededSampler(decoding, len(rows), device)]),
                       stopping_criteria=StoppingCriteriaList([StopWhenCancelled(cancelled)]),
                       streamer=PipeStreamer(send))


# later steps of an answer reach the pool at most this often: text still streams smoothly, and the pool's
# process, woken once per message, leaves the cores to the workers (a wake-up per token per worker slowed
# the first token of the other workers' panels)
STREAM_INTERVAL_S = 0.05
NUCLEUS_CANDIDATES = 64  # tokens sorted for top-p first; all of them when these hold less than top_p


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with one generator per row, as a logits processor.

    It leaves only the sampled token finite, so ``generate`` (run greedy) takes exactly that token.
    A row's tokens thus depend on its seed alone, not on which rows it was batched with.
    """

    def __init__(self, decoding: dict, rows: int, device: torch.device) -> None:
        self.temperature = decoding["temperature"]
        self.top_p = decoding["top_p"]
        self.generators = [torch.Generator(device=device).manual_seed(decoding["seed"]) for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.temperature <= 0:
            chosen = torch.argmax(scores, dim=-1)
        else:
            probs = torch.softmax(scores.float() / self.temperature, dim=-1)
            chosen = torch.cat([self._sample(row, generator) for row, generator in zip(probs, self.generators)])
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, chosen[:, None], 0.0)

    def _sample(self, probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """One token from ``probs`` restricted to its top-p nucleus: the smallest set of most likely tokens
        whose mass reaches top_p (the best token always stays)."""
        if self.top_p >= 1.0:
            return torch.multinomial(probs, 1, generator=generator)
        # the nucleus is almost always among the most likely few dozen tokens: sort only those when it is
        best, order = torch.topk(probs, min(NUCLEUS_CANDIDATES, probs.shape[-1]))
        if best.sum() < self.top_p:
            best, order = torch.sort(probs, descending=True)
        outside = torch.cumsum(best, dim=-1) - best >= self.top_p
        return order[torch.multinomial(best.masked_fill(outside, 0.0), 1, generator=generator)]


class StopWhenCancelled(StoppingCriteria):
    def __init__(self, cancelled) -> None:
        self.cancelled = cancelled

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.cancelled(), dtype=torch.bool, device=input_ids.device)


class PipeStreamer(BaseStreamer):
    """Sends the rows' tokens to the pool: the first step at once, later steps gathered for up to
    ``STREAM_INTERVAL_S`` (``generate`` hands over the prompt first)."""

    def __init__(self, send) -> None:
        self.send = send
        self.prompt_seen = False
        self.steps: list[list[int]] = []
        self.sent = None  # when the last message went

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.steps.append(value.reshape(-1).tolist())
        if self.sent is None or time.monotonic() - self.sent >= STREAM_INTERVAL_S:
            self._flush()

    def end(self) -> None:
        if self.steps:
            self._flush()

    def _flush(self) -> None:
        self.send(self.steps)
        self.steps = []
        self.sent = time.monotonic()
