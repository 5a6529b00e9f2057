"""Continuous batching in a model process: the rows of every request to it decoded together.

The pool sends each request to a model process as soon as it has one (several threads, several callers: the
arena's comparisons, ``serve``'s API requests, the choices of one request for ``n``), and the process keeps
one batch of rows for all of them. Requests that arrive while the batch decodes join it at the next step;
rows that end leave it. The batch is re-formed at those points: ``model.generate`` stops at the step's end,
and the next call starts from each unfinished row's prompt plus what it generated so far, padded on the
left together with the newcomers' prompts (one prefill of the whole batch). This needs nothing of the model
but ``generate`` and its own cache, so every architecture the pool serves (remote code included) batches
the same way.

Each row keeps its own decoding settings, seed, token budget and end-of-sequence ids from one batch to the
next: its :class:`torch.Generator` stays with it, so a seeded row draws exactly the numbers it would draw
alone (:class:`app.serving.sampling.SeededSampler`). What batching can change is the arithmetic: a row's
logits are computed in matrices of another shape (other rows, left padding, a prefill instead of a cached
step), which moves them by float rounding; a greedy or sampled choice can only flip where two tokens are
that close (docs/serving.md "Batching across requests").

A failing batch fails nobody at once: its requests are retried one at a time, each from where it stood, and
only one that fails alone gets the error. A request cancelled by the pool (its reader stopped, or every row
ended at a stop string) leaves at once; the others go on.

Messages, each ``(kind, tag, ...)``; the answers ``(kind, tag, value)`` (:mod:`app.serving.model_process`):

- ``("generate", tag, rows, decoding, pad_id, eos_ids)``: rows are ``(adapter names, prompt ids)``; answered
  by ``("tokens", None, {tag: steps})`` messages, each step one id per row (None for a row already ended),
  then ``("ok", tag, None)``. A request's first step is sent at once; later ones gathered for up to
  ``sampling.STREAM_INTERVAL_S``, for every request in one message;
- ``("cancel", tag)``: the request ends (its ``("ok", tag, None)`` follows; nothing if it had ended);
- anything else is answered between two steps by ``answer(message)``.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field

import torch
from transformers import GenerationConfig, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from app.serving.multi_lora import MultiLora
from app.serving.sampling import STREAM_INTERVAL_S, SeededSampler
from core.errors import UserError


@dataclass
class Row:
    """One answer being generated: its adapters, its tokens so far (prompt, then generated) and what is left."""

    adapters: tuple[str, ...]
    ids: list[int]
    left: int  # new tokens it may still generate
    settings: dict
    generator: torch.Generator
    done: bool = False


@dataclass
class Request:
    """One ``generate`` message: its rows (kept in one batch together), and the steps not sent yet."""

    tag: int
    rows: list[Row]
    pad_id: int
    eos_ids: set[int]
    steps: list[list[int | None]] = field(default_factory=list)
    started: bool = False  # a step of it was sent
    alone: bool = False  # it was in a batch that failed: tried on its own next


class Batcher:
    """The model process's requests and its one batch. :meth:`serve` runs until a ``stop`` message or the
    pool goes away; ``answer(message)`` returns the value of any other request (it may raise)."""

    def __init__(self, lora: MultiLora, conn, answer, max_rows: int) -> None:
        self.lora = lora
        self.conn = conn
        self.answer = answer
        self.max_rows = max_rows
        self.device = next(lora.model.parameters()).device
        self.requests: dict[int, Request] = {}  # in the order they came
        self.inbox: deque = deque()
        self.last_sent = 0.0
        self.batches = 0  # batches formed (the ``stats`` request)
        self.largest = 0  # the most rows a batch had

    def serve(self) -> None:
        while True:
            if not self.requests and not self.inbox:
                self.inbox.append(self.conn.recv())  # EOFError: the pool is gone
            while self.conn.poll():
                self.inbox.append(self.conn.recv())
            while self.inbox:
                message = self.inbox.popleft()
                if message[0] == "stop":
                    return
                self._handle(message)
            if self.requests:
                self._decode(self._form())

    def stats(self) -> dict:
        """Batches formed so far and the most rows one had."""
        return {"batches": self.batches, "largest": self.largest}

    # --- messages --------------------------------------------------------------------------------
    def _handle(self, message: tuple) -> None:
        kind, tag, *args = message
        if kind == "generate":
            try:
                self.requests[tag] = self._request(tag, *args)
            except Exception as err:  # noqa: BLE001 - a malformed request fails alone
                self.conn.send(("error", tag, describe_error(err)))
        elif kind == "cancel":
            if tag in self.requests:
                self._end(self.requests[tag])
        elif kind == "stats":
            self.conn.send(("ok", tag, self.stats()))
        else:
            try:
                self.conn.send(("ok", tag, self.answer((kind, *args))))
            except Exception as err:  # noqa: BLE001 - one failed request does not end the worker
                self.conn.send(("error", tag, describe_error(err)))

    def _request(self, tag: int, rows: list, decoding: dict, pad_id: int, eos_ids: list[int]) -> Request:
        """A ``generate`` message's request: each row with its own generator, seeded with the request's seed."""
        generators = [torch.Generator(device=self.device).manual_seed(decoding["seed"]) for _ in rows]
        return Request(
            tag,
            [
                Row(tuple(adapters), list(ids), decoding["max_new_tokens"], decoding, generator)
                for (adapters, ids), generator in zip(rows, generators)
            ],
            pad_id,
            set(eos_ids),
        )

    def _end(self, request: Request, error: BaseException | None = None) -> None:
        """The request leaves: its last steps and its answer (or its error) go to the pool."""
        del self.requests[request.tag]
        for row in request.rows:
            row.done = True
        if error is not None:
            self.conn.send(("error", request.tag, describe_error(error)))
            return
        if request.steps:
            self.conn.send(("tokens", None, {request.tag: request.steps}))
            request.steps = []
        self.conn.send(("ok", request.tag, None))

    # --- batches ---------------------------------------------------------------------------------
    def _form(self) -> list[Request]:
        """The requests of the next batch: one retried on its own, else every request in the order they came
        while their rows fit ``max_rows`` (the first always goes, however many rows it has)."""
        waiting = list(self.requests.values())
        alone = next((r for r in waiting if r.alone), None)
        if alone is not None:
            return [alone]
        batch, rows = [], 0
        for request in waiting:
            if batch and rows + len(request.rows) > self.max_rows:
                break
            batch.append(request)
            rows += len(request.rows)
        return batch

    def _decode(self, batch: list[Request]) -> None:
        """Decode these requests' rows together until one ends them all, a message comes, or most have ended."""
        rows = [row for request in batch for row in request.rows]
        width = max(len(row.ids) for row in rows)
        pad_id = batch[0].pad_id
        input_ids = torch.tensor([[pad_id] * (width - len(r.ids)) + r.ids for r in rows], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(r.ids)) + [1] * len(r.ids) for r in rows], device=self.device)
        eos_ids = set().union(*(request.eos_ids for request in batch))
        if not eos_ids:  # ``generate`` would take the model's own: end the rows on them too
            eos = self.lora.model.generation_config.eos_token_id
            eos_ids = set([eos] if isinstance(eos, int) else eos or [])
        config = GenerationConfig(
            max_new_tokens=max(row.left for row in rows),
            do_sample=False,
            pad_token_id=pad_id,
            eos_token_id=sorted(eos_ids) or None,
        )
        self.batches += 1
        self.largest = max(self.largest, len(rows))
        self.lora.route([row.adapters for row in rows])
        try:
            with torch.inference_mode():
                self.lora.model.generate(
                    input_ids=input_ids,
                    attention_mask=attention_mask,
                    generation_config=config,
                    logits_processor=LogitsProcessorList(
                        [
                            SeededSampler(
                                [row.settings for row in rows],
                                [width - len(row.ids) for row in rows],
                                [row.generator for row in rows],
                            )
                        ]
                    ),
                    stopping_criteria=StoppingCriteriaList([Step(self, batch, eos_ids)]),
                )
        except Exception as err:  # noqa: BLE001 - whose fault is found by trying each request on its own
            failed = [request for request in batch if request.tag in self.requests]
            if len(failed) == 1:
                self._end(failed[0], err)
            else:
                for request in failed:
                    request.alone = True
            return
        self._send_steps(force=True)

    def _send_steps(self, force: bool = False) -> None:
        """Send the steps gathered: at once when a request gets its first, else every ``STREAM_INTERVAL_S``."""
        waiting = [r for r in self.requests.values() if r.steps]
        if not waiting:
            return
        if not (force or any(not r.started for r in waiting) or time.monotonic() - self.last_sent >= STREAM_INTERVAL_S):
            return
        self.conn.send(("tokens", None, {r.tag: r.steps for r in waiting}))
        for request in waiting:
            request.steps, request.started = [], True
        self.last_sent = time.monotonic()


class Step(StoppingCriteria):
    """Called by ``generate`` after each step: takes each row's new token, ends the rows and requests that are
    done, streams, and stops the batch where it must be re-formed (a message came, or most rows ended)."""

    def __init__(self, batcher: Batcher, batch: list[Request], eos_ids: set[int]) -> None:
        self.batcher = batcher
        self.batch = batch
        self.rows = [row for request in batch for row in request.rows]
        self.eos_ids = eos_ids  # (a row ends on any of the batch's: ``generate`` pads it after one)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        tokens = iter(input_ids[:, -1].tolist())
        batcher = self.batcher
        for request in self.batch:
            if request.tag not in batcher.requests:  # cancelled meanwhile
                for _ in request.rows:
                    next(tokens)
                continue
            step = []
            for row in request.rows:
                token = next(tokens)
                if row.done:
                    step.append(None)
                    continue
                row.ids.append(token)
                row.left -= 1
                row.done = token in self.eos_ids or row.left <= 0
                step.append(token)
            request.steps.append(step)
            request.alone = False  # a step went through: whatever failed, it was not this request alone
            if all(row.done for row in request.rows):
                batcher._end(request)
        batcher._send_steps()
        conn = batcher.conn
        while conn.poll():
            message = conn.recv()
            if message[0] == "cancel":  # handled here: a row leaving is no reason to re-form the batch
                if message[1] in batcher.requests:
                    batcher._end(batcher.requests[message[1]])
            else:
                batcher.inbox.append(message)
        ended = sum(row.done for row in self.rows)
        if batcher.inbox or 2 * ended > len(self.rows):
            return torch.ones(len(self.rows), dtype=torch.bool, device=input_ids.device)
        return torch.tensor([row.done for row in self.rows], dtype=torch.bool, device=input_ids.device)


def describe_error(error: BaseException) -> str:
    """One line for a panel: a user error as is, anything else with its type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, UserError):
        return text
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__
