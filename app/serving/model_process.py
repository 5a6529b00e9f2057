"""One full model of the model pool in a process of its own, with its LoRA adapters.

The pool (:mod:`app.serving.pool`) starts a model process per distinct full model and talks to it over
a pipe. Panels on different full models (a run's base and its cpt, with sft and dpo riding on cpt)
then really generate at the same time on separate cores, which threads of one Python process cannot
do when the models are small and each step is mostly interpreter work. The model process owns the
model (:class:`app.serving.multi_lora.MultiLora`) and the sampling (:mod:`app.serving.sampling`); the
pool owns tokenizers, text and locks, and sends token ids in and receives token ids back.

Requests, each with a tag of the pool's that its answers carry, so several threads of the pool use one
process at once; each request is answered by ``("ok", tag, value)`` or ``("error", tag, line)``:

- ``("generate", tag, rows, decoding, pad_id, eos_ids)`` and ``("cancel", tag)``: rows are ``(adapter names,
  prompt ids)``, decoded in one batch with the rows of every other request to this process
  (:mod:`app.serving.batching`, which streams ``("tokens", None, {tag: steps})`` before the answer);
- ``("attach", tag, name, path)``: load the PEFT LoRA adapter in ``path`` as ``name``;
- ``("logits", tag, adapter names, ids)``: the next-token logits after ``ids``;
- ``("score", tag, adapter names, sequences, top)``: one forward pass over each sequence of ids; for each token
  after the first its log-probability (log-softmax of the logits before it, in float32) and the ``top`` most
  likely tokens there with theirs (:func:`score_sequences`);
- ``("memory", tag)``: bytes of the distinct weight tensors held, those mapped from a cache file by file (other
  workers may map the same file) and the rest as the worker's own, and the process's own memory (pages
  shared with no other process);
- ``("stats", tag)``: the batches formed so far and the most rows one had;
- ``("stop",)``: exit.

Requests other than ``generate`` are answered between two decoding steps, in the order they came.
The first message after start is ``("ok", {"context": context length or None, "held_as_delta": bool})``
once the model is loaded (``held_as_delta``: held as the reference model plus its 8-bit difference), or
``("error", line)``.
"""

from __future__ import annotations

import ctypes
import itertools
import multiprocessing
import os
import queue
import threading
from multiprocessing.connection import Connection
from pathlib import Path

import torch

from app.serving.batching import Batcher, describe_error
from app.serving.memory import memory_of, weight_bytes_by_origin
from app.serving.multi_lora import MultiLora
from app.serving.shared_weights import DeltaMismatch, hold_as_delta, map_weights
from core.errors import UserError


class ModelProcessGone(UserError):
    """The model process ended (killed, out of memory, crashed); its model is loaded again on next use."""


class ModelProcess:
    """The pool's handle on one model process; any number of threads may use it at once.

    ``context``: the model's context length (None when it has none); ``held_as_delta``: whether the
    model is held as its reference plus an 8-bit difference rather than whole. A thread of its own reads
    the process's answers and hands each to the request it belongs to (by its tag).
    """

    def __init__(
        self,
        path: str,
        device: str,
        dtype: torch.dtype,
        threads: int,
        trust_remote_code: bool,
        setting: str,
        cpus: list[int] | None = None,
        cache_dir: str | None = None,
        reference: str | None = None,
        max_batch_rows: int = 64,
    ) -> None:
        context = multiprocessing.get_context("forkserver")
        context.set_forkserver_preload(["app.serving.preload"])  # libraries imported once, then forked
        self.path = path
        self._tags = itertools.count()
        self._waiting: dict[int, queue.SimpleQueue] = {}
        self._lock = threading.Lock()  # guards _waiting (never held while reading or writing the pipe)
        self._send_lock = threading.Lock()  # one message at a time into the pipe
        self._ended = False  # the reader saw the process end
        self._reader: threading.Thread | None = None
        self._conn, child = context.Pipe()
        self.process = context.Process(
            target=run_model_process,
            args=(
                child,
                path,
                device,
                str(dtype).removeprefix("torch."),
                threads,
                trust_remote_code,
                setting,
                cpus,
                cache_dir,
                reference,
                max_batch_rows,
            ),
            name=f"chimed-model:{path}",
            daemon=True,
        )
        self.process.start()
        child.close()
        try:
            kind, loaded = self._conn.recv()  # the model is loaded (or why not)
        except (EOFError, OSError):
            self.close()
            raise self._gone() from None
        except BaseException:
            self.close()
            raise
        if kind != "ok":
            self.close()
            raise UserError(loaded)
        self.context: int | None = loaded["context"]
        self.held_as_delta: bool = loaded["held_as_delta"]
        self._reader = threading.Thread(target=self._read, name=f"read:{Path(path).name}", daemon=True)
        self._reader.start()

    def request(self, *message):
        """Send one request and return its value; a worker error is raised as a :class:`UserError`."""
        tag, answers = self._send(message[0], message[1:])
        return self._answer(tag, answers)

    def generate(self, rows, decoding: dict, pad_id: int, eos_ids: list[int], on_tokens) -> None:
        """Generate for these rows, batched with every other request to the process, and stream them:
        ``on_tokens(steps)`` with the steps since the last call, one id per row each (None for a row that has
        ended). Should ``on_tokens`` return True, this request is stopped (the others go on); should it
        fail, the request is stopped too, its remaining messages read, and the error raised."""
        tag, answers = self._send("generate", (rows, decoding, pad_id, eos_ids))
        failed: list[BaseException] = []
        stopped = False
        while True:
            kind, value = self._next(answers)
            if kind != "tokens":
                break
            if failed or stopped:
                continue
            try:
                stopped = bool(on_tokens(value))
            except Exception as err:  # noqa: BLE001 - raised once the process has let the request go
                failed.append(err)
            if stopped or failed:
                self._send_message(("cancel", tag))
        self._forget(tag)
        if kind == "error":
            raise UserError(value)
        if failed:
            raise failed[0]

    def close(self) -> None:
        if self.process.is_alive():
            try:
                with self._send_lock:
                    self._conn.send(("stop",))
            except OSError:
                pass
            self.process.join(timeout=5)
            if self.process.is_alive():
                self.process.kill()
                self.process.join(timeout=5)
        if self._reader is not None:
            self._reader.join(timeout=5)  # it sees the end of the pipe and fails whatever still waits
        self._conn.close()

    @property
    def alive(self) -> bool:
        return self.process.is_alive() and not self._conn.closed and not self._ended

    # --- the pipe ----------------------------------------------------------------------------------
    def _send(self, kind: str, args: tuple) -> tuple[int, queue.SimpleQueue]:
        answers: queue.SimpleQueue = queue.SimpleQueue()
        with self._lock:
            if self._ended:
                raise self._gone()
            tag = next(self._tags)
            self._waiting[tag] = answers
        self._send_message((kind, tag, *args))
        return tag, answers

    def _send_message(self, message: tuple) -> None:
        try:
            with self._send_lock:
                self._conn.send(message)
        except OSError:
            raise self._gone() from None

    def _answer(self, tag: int, answers: queue.SimpleQueue):
        kind, value = self._next(answers)
        self._forget(tag)
        if kind == "error":
            raise UserError(value)
        return value

    def _next(self, answers: queue.SimpleQueue) -> tuple[str, object]:
        kind, value = answers.get()
        if kind == "gone":
            raise self._gone()
        return kind, value

    def _forget(self, tag: int) -> None:
        with self._lock:
            self._waiting.pop(tag, None)

    def _read(self) -> None:
        """The reader thread: each answer to its request's queue until the pipe ends; then every request
        still waiting learns that the process is gone."""
        while True:
            try:
                kind, tag, value = self._conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                if kind == "tokens":
                    for each, steps in value.items():
                        if each in self._waiting:
                            self._waiting[each].put(("tokens", steps))
                elif tag in self._waiting:
                    self._waiting[tag].put((kind, value))
        with self._lock:
            self._ended = True
            for answers in self._waiting.values():
                answers.put(("gone", None))

    def _gone(self) -> ModelProcessGone:
        self.process.join(timeout=5)
        return ModelProcessGone(
            f"the process serving {self.path} stopped (exit code {self.process.exitcode}); "
            "it is loaded again for the next question"
        )


# --- in the model process --------------------------------------------------------------------------


def run_model_process(
    conn: Connection,
    path: str,
    device: str,
    dtype: str,
    threads: int,
    trust_remote_code: bool,
    setting: str,
    cpus: list[int] | None,
    cache_dir: str | None = None,
    reference: str | None = None,
    max_batch_rows: int = 64,
) -> None:
    """The model process: load the model, then answer requests until ``stop`` or the pool goes away, the
    generations batched together (:class:`app.serving.batching.Batcher`, at most ``max_batch_rows`` rows).

    ``cpus``: the cores this worker keeps to. Woken by a request, a worker then starts on its own core
    at once instead of queueing behind the other workers on the core it last ran on (2-5 ms on a
    2-core machine, BENCHMARKS.md "Serving"). ``cache_dir`` (CPU): the weights are mapped from a file
    there, shared with the other workers (:mod:`app.serving.shared_weights`); ``reference``: the full model
    ``path`` was trained from, whose mapped weights plus an 8-bit difference then hold it.
    """
    if threads > 0 and not device.startswith("cuda"):
        torch.set_num_threads(threads)
    keep_freed_memory()
    if cpus:
        os.sched_setaffinity(0, cpus)
    try:
        model, mapped, held_as_delta = load_full_model(
            path, getattr(torch, dtype), trust_remote_code, setting, cache_dir, reference
        )
        lora = MultiLora(model.to(device).eval())
    except Exception as err:  # noqa: BLE001 - reported to the pool as the load's answer
        conn.send(("error", describe_error(err)))
        return
    conn.send(("ok", {"context": context_of(model.config), "held_as_delta": held_as_delta}))
    try:
        Batcher(lora, conn, lambda message: answer_request(lora, message, mapped), max_batch_rows).serve()
    except (EOFError, OSError):
        return  # the pool is gone


def context_of(config) -> int | None:
    """A model's context length as the pool holds prompts to it (its config's ``max_position_embeddings``)."""
    return getattr(config, "max_position_embeddings", None)


def keep_freed_memory() -> None:
    """Let glibc's malloc keep freed blocks of up to 64 MiB for reuse instead of unmapping them.

    A model held as a difference (:mod:`app.serving.shared_weights`) builds each weight matrix anew in every
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


def load_full_model(
    path: str, dtype: torch.dtype, trust_remote_code: bool, setting: str, cache_dir: str | None, reference: str | None
) -> tuple[torch.nn.Module, dict[int, str], bool]:
    """The model in ``path``, when mapped ``{data pointer: file}`` of its mapped tensors, and whether it is
    held as ``reference`` plus a difference."""
    from training.modeling import load_causal_lm

    def load(where: str) -> torch.nn.Module:
        return load_causal_lm(where, trust_remote_code=trust_remote_code, dtype=dtype, setting=setting)

    model = load(reference or path)
    if cache_dir is None:
        return model, {}, False
    file, pointers = map_weights(model, reference or path, Path(cache_dir), dtype)
    if reference:
        try:
            return hold_as_delta(model, load(path)), dict.fromkeys(pointers, str(file)), True
        except DeltaMismatch:  # not trained from it after all (another architecture): held whole
            model = load(path)
            file, pointers = map_weights(model, path, Path(cache_dir), dtype)
    return model, dict.fromkeys(pointers, str(file)), False


def cpu_slots(threads: int) -> list[list[int]]:
    """This process's cores cut into groups of ``threads`` (one group per worker, taken in turn);
    empty where cores cannot be chosen (not Linux) or torch picks the threads (``threads`` 0)."""
    if threads <= 0 or not hasattr(os, "sched_getaffinity"):
        return []
    cores = sorted(os.sched_getaffinity(0))
    if threads >= len(cores):
        return [cores]
    return [cores[i : i + threads] for i in range(0, len(cores) - threads + 1, threads)]


def answer_request(lora: MultiLora, message: tuple, mapped: dict[int, str]):
    """The value for one of the pool's requests other than ``generate`` (see the module's docstring)."""
    kind, *args = message
    device = next(lora.model.parameters()).device
    if kind == "attach":
        lora.attach(*args)
        return None
    if kind == "memory":
        own, files = weight_bytes_by_origin(lora.model, mapped)
        return {
            "weights": own + sum(files.values()),
            "own": own,
            "mapped": files,
            "private": memory_of()["private"],
            "cuda": torch.cuda.memory_allocated() if device.type == "cuda" else None,
        }
    if kind == "logits":
        adapters, ids = args
        lora.route([tuple(adapters)])
        with torch.inference_mode():
            return lora.model(input_ids=torch.tensor([ids], device=device)).logits[0, -1].float().cpu()
    if kind == "score":
        return score_sequences(lora, *args, device=device)
    raise ValueError(f"unknown request {kind!r}")


def score_sequences(lora: MultiLora, adapters, sequences: list[list[int]], top: int, *, device: torch.device) -> list:
    """Per sequence ``(logprobs, top_ids, top_logprobs)``: ``logprobs[i]`` is the log-probability of token
    ``i + 1`` after the tokens before it, ``top_ids[i]`` / ``top_logprobs[i]`` the ``top`` most likely tokens
    there (best first). Each sequence is its own forward pass (no padding: exactly the model's values)."""
    lora.route([tuple(adapters)])
    scored = []
    with torch.inference_mode():
        for ids in sequences:
            logits = lora.model(input_ids=torch.tensor([ids], device=device)).logits[0, :-1]
            logprobs = torch.log_softmax(logits.float(), dim=-1)
            chosen = logprobs.gather(1, torch.tensor(ids[1:], dtype=torch.long, device=device)[:, None])[:, 0]
            best, best_ids = logprobs.topk(top, dim=-1)
            scored.append((chosen.cpu().tolist(), best_ids.cpu().tolist(), best.cpu().tolist()))
    return scored
