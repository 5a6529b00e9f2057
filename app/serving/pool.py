"""Serving several checkpoints at once (docs/design.md "Serving several checkpoints at once").

A run's four contestants share most of their weights: ``base/`` and ``cpt/`` are full models (``cpt/``
is an adapter on base when trained with ``cpt.use_lora``), ``sft/`` is a LoRA adapter on cpt and
``dpo/`` a LoRA adapter on cpt + sft. The pool therefore keeps

- each distinct full model once (a "root"; hard-linked copies of the same weights, as a run resumed
  with ``--from dpo`` has, count as one), and
- every LoRA stage as a named adapter (PEFT's format) on its root, each adapter's factors once: a
  contestant made of several adapters (dpo = sft + dpo) applies all of them, so its output is exactly
  that of the merged model (:mod:`app.serving.multi_lora`).

Each root lives in a worker process of its own (:mod:`app.serving.model_process`), so panels on
different roots generate at the same time on separate cores. On CPU the workers map their weights from
one cache file per model, so pages two workers read are held once, and a full model trained from
another (a run's cpt from its base: the manifest's parent) can be held as that model's weights plus an
8-bit difference (:mod:`app.serving.shared_weights`, ``app.delta_bits: 8``; 0, the default, holds it
whole and exact): a run's four contestants then hold about 1.4 times one model's weights instead of 2.1
(BENCHMARKS.md "Serving"). Every answer says how it was served (``Answer.serving``); the arena stores
that with it. Every request to a root, from any caller (a comparison's panels, other browser sessions,
``serve``'s API requests), is decoded in one batch with the others (continuous batching,
:mod:`app.serving.batching`): a request that comes while others generate joins them at the next step, each
row applying its own adapters (one fused low-rank product per layer for all rows) and its own decoding
settings and seed. Each root has a lock held only while its model is loaded and adapters are attached; an
answer's generation runs outside it. A conversation is encoded before that lock is taken (rendered once,
:func:`fit_prompt`), and one that does not fit its model's context with the answer's room fails its panel
(:class:`ContextLengthExceeded`) unless ``app.trim_history`` leaves its oldest turns out, which the answer
then lists. Every answer samples with its own seeded generator, so it
depends on its seed only, not on the other requests it is batched with (up to float rounding, docs/serving.md
"Batching across requests"); an answer cut at a stop string counts its tokens up to that string.

The UI never touches a model: it calls :meth:`ModelPool.generate` and reads the answers as they grow. An
endpoint contestant (a model served by an OpenAI-compatible engine, ``app.endpoints``) is answered in the same
:class:`Generation`, by a thread of its own that streams from the engine (:mod:`app.serving.endpoints`, which builds
on this module: the arena passes its endpoint clients in).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from app.contestants import Contestant
from app.serving.memory import mapped_files
from app.serving.model_process import ModelProcess, context_of, cpu_slots, describe_error
from app.serving.sampling import Decoding
from app.serving.shared_weights import DELTA_BITS, weights_identity
from core.config import Config
from core.errors import UserError
from core.prompting import PLAIN_TURN_STOPS, conversation_prompt
from core.registry import is_chat_stage
from training.evaluation.loglik import token_ids
from training.modeling import (
    default_device,
    default_dtype,
    stage_chain,
    stage_tokenizer,
    tokenizer_dir,
    trust_remote_code,
)


@dataclass(frozen=True)
class Answer:
    """One panel's answer as it stands: ``text`` grows while ``done`` is False."""

    checkpoint_id: str
    text: str = ""
    done: bool = False
    error: str | None = None  # set when this panel failed; the other panels are unaffected
    n_tokens: int = 0
    first_token_s: float | None = None  # from the request to the first generated token
    latency_s: float | None = None  # from the request to the end of the answer
    # how the model answering it is held: {"mode": "exact"} or {"mode": "delta", "bits": 8}, with "device"
    # and "dtype"; set once its model is ready
    serving: dict | None = None
    prompt_tokens: int | None = None  # the prompt's tokens as the model saw them
    # "stop": the answer ended (end of sequence, a stop string, a plain stage's next turn); "length": it ran
    # out of max new tokens; None while it grows (and when it was cancelled)
    finish_reason: str | None = None
    dropped_messages: tuple[int, ...] = ()  # the conversation's messages left out to fit (app.trim_history)
    # the ids the model generated for it, set when done: up to the token that completed a stop string, with
    # the end-of-sequence token when that ended it (what /v1/completions scores)
    token_ids: tuple[int, ...] = ()


@dataclass(frozen=True)
class Prompt:
    """A conversation encoded for one contestant: its token ids, and the indices of the conversation's
    messages left out so that it fits (only with trimming on, :func:`fit_prompt`)."""

    ids: list[int]
    dropped: tuple[int, ...] = ()


@dataclass
class PanelRequest:
    """What one panel should answer: a contestant and the conversation it has seen, ending with the user.

    ``stop``: strings that end the answer (left out of it, counted in its tokens); ``prompt``: the
    conversation already encoded by :meth:`ModelPool.encode` (None: the pool encodes it); ``raw``: the
    prompt is text to continue (``/v1/completions``), whatever the stage: the answer is the continuation as
    generated, not cut at a plain stage's next 问：/答： turn nor stripped; ``template_kwargs``: variables for a
    chat stage's template (serve's ``chat_template_kwargs``)."""

    contestant: Contestant
    messages: list[dict]
    stop: tuple[str, ...] = ()
    prompt: Prompt | None = None
    raw: bool = False
    template_kwargs: dict = field(default_factory=dict)


class Generation:
    """The answers of one comparison, written by the pool's threads and read by the app.

    ``answers`` is a snapshot (a list of frozen :class:`Answer`); :meth:`stream` yields snapshots as
    they change; :meth:`cancel` stops the generation early (e.g. the user started a new conversation).
    """

    def __init__(self, checkpoint_ids: list[str], decoding: Decoding) -> None:
        self.decoding = decoding
        self.started = time.perf_counter()
        self._answers = [Answer(cid) for cid in checkpoint_ids]
        self._changed = threading.Condition()
        self._version = 0
        self.cancelled = threading.Event()

    @property
    def answers(self) -> list[Answer]:
        with self._changed:
            return list(self._answers)

    @property
    def done(self) -> bool:
        return all(a.done for a in self.answers)

    def update(self, row: int, **changes) -> None:
        with self._changed:
            self._answers[row] = replace(self._answers[row], **changes)
            self._version += 1
            self._changed.notify_all()

    def elapsed(self) -> float:
        return time.perf_counter() - self.started

    def fail(self, row: int, error: BaseException | str) -> None:
        message = error if isinstance(error, str) else describe_error(error)
        self.update(row, error=message, done=True, latency_s=self.elapsed())

    def cancel(self) -> None:
        self.cancelled.set()

    def stream(self, timeout: float | None = None) -> Iterator[list[Answer]]:
        """Snapshots of the answers each time one changes, the last one with every answer done."""
        deadline = None if timeout is None else time.monotonic() + timeout
        seen = -1
        while True:
            with self._changed:
                while self._version == seen:
                    wait = None if deadline is None else deadline - time.monotonic()
                    if wait is not None and wait <= 0:
                        raise TimeoutError(f"generation not finished after {timeout} s")
                    self._changed.wait(wait)
                seen = self._version
                snapshot = list(self._answers)
            yield snapshot
            if all(a.done for a in snapshot):
                return

    def wait(self, timeout: float | None = None) -> list[Answer]:
        """Block until every answer is done; returns the final answers."""
        snapshot = self.answers
        for snapshot in self.stream(timeout):  # noqa: B007 - the last snapshot is the answer
            pass
        return snapshot


# --- streaming --------------------------------------------------------------------------------------

# never shown nor stored: U+FFFD (what decoding makes of bytes that are not yet, or never will be, a whole
# UTF-8 character) and the C0/C1 control characters other than newline and tab
UNSHOWABLE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\ufffd]")


def clean_answer(text: str) -> str:
    """Decoded answer text as shown and stored: whole characters only, no control characters.

    A byte-level token can end inside a multi-byte character: decoded, the incomplete tail is U+FFFD and is
    left out until the token completing it arrives (the text is decoded again from all ids); a tail still
    incomplete at the end, or bytes that can never form a character, are dropped.
    """
    return UNSHOWABLE.sub("", text)


class PanelStreamer:
    """Receives each step's tokens for the whole batch and publishes every row's text as it grows.

    ``chat[i]``: row i is an instruction-tuned stage. The others (base, cpt) continue a plain 问：/答：
    conversation and run on into an invented next turn: such a row ends at the first line starting with
    a marker (:func:`core.prompting.cut_plain_answer`), and its answer is what comes before.
    ``stops[i]``: row i's stop strings (a request's ``stop``), which end it the same way.

    A row that ends at a stop string or marker counts its tokens up to the one that completed it, whatever
    the model generated after it before it was told to stop: the count depends on the seed only, not on
    how the steps were gathered into messages.
    """

    def __init__(
        self,
        generation: Generation,
        rows: list[int],
        tokenizers: list,
        eos_ids: set[int],
        chat: list[bool] | None = None,
        stops: list[tuple[str, ...]] | None = None,
    ) -> None:
        self.generation = generation
        self.rows = rows  # batch row -> panel index
        self.tokenizers = tokenizers
        self.eos_ids = eos_ids
        self.chat = chat or [True] * len(rows)
        self.stops = [
            tuple(stop) + (() if is_chat else PLAIN_TURN_STOPS)
            for stop, is_chat in zip(stops or [()] * len(rows), self.chat)
        ]
        self.ids: list[list[int]] = [[] for _ in rows]
        self.eos: list[int | None] = [None] * len(rows)  # the end-of-sequence token that ended a row
        self.finished = [False] * len(rows)

    @property
    def all_finished(self) -> bool:
        """Every row has ended (end of sequence, a stop string, the next turn's marker): nothing more to do."""
        return all(self.finished)

    def put(self, steps: list[list[int]]) -> None:
        """The next steps of the batch, one token per row each; every row's text is published once."""
        for i, panel in enumerate(self.rows):
            if self.finished[i]:
                continue
            first = (
                {}
                if self.ids[i] or self.generation.answers[panel].first_token_s is not None
                else {"first_token_s": self.generation.elapsed()}
            )
            before, ended = len(self.ids[i]), False
            for step in steps:
                if step[i] is None:  # (the model process ended the row: its end was in an earlier step)
                    break
                if step[i] in self.eos_ids:
                    ended, self.eos[i] = True, step[i]
                    break
                self.ids[i].append(step[i])
            text = self._decoded(i, len(self.ids[i]))
            if self._stop_at(i, text) is not None:
                # the text before these steps held no stop: the first prefix that does ends the answer
                n = next(
                    (
                        n
                        for n in range(before + 1, len(self.ids[i]) + 1)
                        if self._stop_at(i, self._decoded(i, n)) is not None
                    ),
                    len(self.ids[i]),
                )
                del self.ids[i][n:]
                self._finish(i, "stop", **first)
            elif ended:
                self._finish(i, "stop", **first)
            else:
                self.generation.update(panel, text=self._answer(i, text), n_tokens=len(self.ids[i]), **first)

    def end(self) -> None:
        """The batch is over: rows still open ran out of tokens (or were cancelled)."""
        for i in range(len(self.rows)):
            if not self.finished[i]:
                limited = len(self.ids[i]) >= self.generation.decoding.max_new_tokens
                self._finish(i, "length" if limited else None)

    def _decoded(self, i: int, n: int) -> str:
        """The text of row i's first ``n`` tokens."""
        return clean_answer(self.tokenizers[i].decode(self.ids[i][:n], skip_special_tokens=True))

    def _stop_at(self, i: int, text: str) -> int | None:
        """Where the first of row i's stop strings starts in ``text``, if one is there."""
        return min((at for at in (text.find(stop) for stop in self.stops[i]) if at >= 0), default=None)

    def _answer(self, i: int, text: str) -> str:
        """Row i's answer in its decoded ``text``: what comes before the first stop (a plain row's stripped)."""
        cut = self._stop_at(i, text)
        text = text if cut is None else text[:cut]
        return text if self.chat[i] else text.strip()

    def _finish(self, i: int, finish_reason: str | None, **changes) -> None:
        self.finished[i] = True
        text = self._answer(i, self._decoded(i, len(self.ids[i])))
        self.generation.update(
            self.rows[i],
            text=text if text.strip() else "",
            n_tokens=len(self.ids[i]),
            done=True,
            latency_s=self.generation.elapsed(),
            finish_reason=finish_reason,
            token_ids=tuple(self.ids[i]) + (() if self.eos[i] is None else (self.eos[i],)),
            **changes,
        )


# --- prompts ---------------------------------------------------------------------------------------


class ContextLengthExceeded(UserError):
    """A conversation whose prompt plus the answer's room (max new tokens) does not fit the model's context:
    refused as vLLM refuses it (OpenAI's ``context_length_exceeded``), with the numbers."""

    def __init__(self, prompt_tokens: int, max_new_tokens: int, context: int, trimmed: bool = False) -> None:
        self.prompt_tokens, self.max_new_tokens, self.context = prompt_tokens, max_new_tokens, context
        super().__init__(
            f"This model's maximum context length is {context} tokens. However, you requested {max_new_tokens} "
            f"output tokens and your prompt contains {prompt_tokens} input tokens, for a total of "
            f"{prompt_tokens + max_new_tokens} tokens. Please reduce the length of the input prompt or the number "
            "of requested output tokens."
            + (
                " (With trim_history every earlier turn was left out: the leading "
                "system messages and the last user message alone are that long.)"
                if trimmed
                else ""
            )
        )


def prompt_ids(tokenizer, messages: list[dict], chat: bool = True, template_kwargs: dict | None = None) -> list[int]:
    """Token ids of the conversation with the generation prompt, rendered and tokenized once.

    Instruction-tuned stages (``chat``) see the chat template (given ``template_kwargs`` as its variables),
    base and cpt the plain 问：/答： text they were trained on, each as the evaluation asks them
    (:func:`core.prompting.conversation_prompt`).
    """
    if chat:
        return list(
            tokenizer.apply_chat_template(messages, add_generation_prompt=True, **(template_kwargs or {}))["input_ids"]
        )
    return list(token_ids(tokenizer, conversation_prompt(tokenizer, messages, chat=False)))


def fit_prompt(
    tokenizer,
    messages: list[dict],
    chat: bool,
    context: int | None,
    max_new_tokens: int,
    trim: bool,
    template_kwargs: dict | None = None,
) -> Prompt:
    """The conversation's prompt if it fits ``context`` with ``max_new_tokens`` to spare (every message
    counts, whatever its role); otherwise :class:`ContextLengthExceeded`, or with ``trim`` the longest
    recent part that fits: the leading system messages, then the conversation from one of its user
    messages on (the last one at least), the turns before it listed as dropped.

    The whole conversation is rendered once. Trimming tries the newest turns first, doubling how many it
    keeps until a try no longer fits, then bisects: each try renders at most about twice what fits the
    context, so the cost grows with the conversation's length only through that first rendering.
    """
    ids = prompt_ids(tokenizer, messages, chat, template_kwargs)
    limit = context - max_new_tokens if context else None
    if limit is None or len(ids) <= limit:
        return Prompt(ids)
    if not trim:
        raise ContextLengthExceeded(len(ids), max_new_tokens, context)
    head = next((i for i, m in enumerate(messages) if m["role"] != "system"), len(messages))
    # starts[j]: keep messages[:head] + messages[starts[j]:]; j = 0 is the whole conversation (too long)
    starts = [head] + [i for i in range(head + 1, len(messages)) if messages[i]["role"] == "user"]

    def kept(j: int) -> list[int]:
        return prompt_ids(tokenizer, messages[:head] + messages[starts[j] :], chat, template_kwargs)

    best, bad = len(starts) - 1, 0
    fitting = kept(best) if best > 0 else ids
    if len(fitting) > limit:
        raise ContextLengthExceeded(len(fitting), max_new_tokens, context, trimmed=True)
    step, galloping = 1, True
    while best - bad > 1:
        j = max(bad + 1, best - step) if galloping else (best + bad) // 2
        tried = kept(j)
        if len(tried) <= limit:
            best, fitting, step = j, tried, step * 2
        else:
            bad, galloping = j, False
    return Prompt(fitting, dropped=tuple(range(head, starts[best])))


# --- the pool ------------------------------------------------------------------------------------


@dataclass
class _Root:
    """One full model, served by its worker process, with the adapters attached to it."""

    key: tuple
    path: str
    reference: str | None = None  # the full model this one was trained from, held as it + a difference
    lock: threading.Lock = field(default_factory=threading.Lock)
    worker: ModelProcess | None = None
    slot: int | None = None  # the group of cores its worker keeps to (CPU serving)
    adapters: dict[tuple, str] = field(default_factory=dict)  # adapter weights identity -> adapter name
    last_used: float = 0.0
    # the model's context length (None: it has none), known once its worker has loaded it; kept when unloaded
    context: int | None = None
    context_known: bool = False
    active: int = 0  # requests being answered by its worker (outside the lock); it is not dropped meanwhile

    @property
    def loaded(self) -> bool:
        return self.worker is not None and self.worker.alive

    def unload(self) -> None:
        if self.worker is not None:
            self.worker.close()
        self.worker = self.slot = None
        self.adapters.clear()


@dataclass
class _Prepared:
    """A contestant ready on its root: the adapters to apply, its tokenizer, and whether it is an
    instruction-tuned stage (``is_chat_stage``) rather than one asked in plain 问：/答： text."""

    adapters: tuple[str, ...]
    tokenizer: object
    chat: bool = True


class ModelPool:
    """The app's models: each full model once, LoRA stages as named adapters, answers streamed.

    ``max_loaded_models`` bounds the full models kept (least recently used ones are dropped when
    idle); ``device`` "" picks CUDA when there is one. :meth:`close` ends the worker processes (they
    also end with this process). The workers start the way Python's "forkserver" processes do: a script
    that uses the pool must keep its work under ``if __name__ == "__main__":``.
    """

    def __init__(self, cfg: Config, device: str | None = None, max_loaded_models: int | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device or cfg.app.device or default_device())
        self.dtype = default_dtype(self.device)
        self.max_loaded_models = max_loaded_models or cfg.app.max_loaded_models
        self._lock = threading.Lock()  # guards the dicts below, never held while loading
        self._roots: dict[tuple, _Root] = {}
        self._tokenizers: dict[str, object] = {}
        self._chains: dict[tuple[str, str], tuple[tuple, list[dict]]] = {}  # (run, stage) -> (manifest stat, chain)
        self._names = 0
        self._cpu_slots = cpu_slots(cfg.app.cpu_threads) if self.device.type == "cpu" else []
        if cfg.app.delta_bits not in DELTA_BITS:
            raise UserError(
                f"app.delta_bits={cfg.app.delta_bits!r}: 8 (a full model trained from another held "
                "as that model + an 8-bit difference) or 0 (held whole)"
            )
        # on CPU the workers map each full model from one file (pages shared between them); a model on a
        # GPU lives in its worker's GPU memory, which other processes cannot share
        on_cpu = self.device.type == "cpu"
        self._cache_dir = str(cfg.home / "cache" / "serving") if on_cpu else None
        self._delta = on_cpu and cfg.app.delta_bits > 0

    # --- what is loaded ------------------------------------------------------------------------
    def loaded(self) -> dict[str, list[str]]:
        """Root model directory -> names of the adapters attached to it (for the benchmark and tests)."""
        return {r.path: sorted(r.adapters.values()) for r in self._loaded_roots()}

    def batch_stats(self) -> dict[str, dict]:
        """Root model directory -> the batches its process has formed and the most rows one had
        (:mod:`app.serving.batching`; for the benchmark and tests)."""
        return {r.path: r.worker.request("stats") for r in self._loaded_roots()}

    def resident_bytes(self, memory: list[dict] | None = None) -> int:
        """Bytes of every distinct parameter and buffer tensor the pool's worker processes hold (a cache
        file that several workers map counted once); ``memory``: :meth:`worker_memory` already asked."""
        memory = self.worker_memory() if memory is None else memory
        return sum(m["own"] for m in memory) + sum(mapped_files(memory).values())

    def worker_memory(self) -> list[dict]:
        """Per loaded model's worker: weight bytes held, its own (unshared) memory, CUDA bytes allocated."""
        memory = []
        for root in self._loaded_roots():
            with root.lock:
                memory.append(root.worker.request("memory"))
        return memory

    def close(self) -> None:
        """Stop every worker process."""
        with self._lock:
            roots = list(self._roots.values())
        for root in roots:
            with root.lock:
                root.unload()

    def preload(self, contestants: list[Contestant]) -> list[str | None]:
        """Load the models and adapters of these contestants now; returns an error line or None for each."""
        errors = []
        for contestant in contestants:
            if contestant.endpoint is not None:  # nothing to load: its engine holds the model
                errors.append(None)
                continue
            try:
                root, chain = self._root_for(contestant)
                with root.lock:
                    self._prepare(root, chain, contestant)
                errors.append(None)
            except Exception as err:  # noqa: BLE001 - reported per contestant, like a panel error
                errors.append(describe_error(err))
        self._evict()
        return errors

    # --- generation ----------------------------------------------------------------------------
    def generate(self, requests: list[PanelRequest], decoding: Decoding, endpoints=None) -> Generation:
        """Start answering every request; returns at once with a :class:`Generation` to read from.

        Requests on the same full model are batched together; different full models run in parallel.
        A failure (a checkpoint that does not load, a generation error) ends only its own panel.
        ``endpoints`` (:class:`app.serving.endpoints.EndpointClients`, the arena's) answers the endpoint contestants.
        """
        generation = Generation([r.contestant.checkpoint_id for r in requests], decoding)
        groups: dict[tuple, tuple[_Root, list[tuple[int, PanelRequest, list[dict]]]]] = {}
        for panel, request in enumerate(requests):
            if request.contestant.endpoint is not None:  # an engine answers it, in a thread of its own
                if endpoints is None:
                    generation.fail(
                        panel, "an endpoint contestant needs the arena's endpoint clients (app.serving.endpoints)"
                    )
                else:
                    endpoints.start(request.contestant.endpoint, request.messages, generation, panel)
                continue
            try:
                root, chain = self._root_for(request.contestant)
            except Exception as err:  # noqa: BLE001 - a broken checkpoint fails its panel only
                generation.fail(panel, err)
                continue
            groups.setdefault(root.key, (root, []))[1].append((panel, request, chain))
        for root, rows in sorted(groups.values(), key=lambda group: -len(group[1])):  # the longest first
            threading.Thread(
                target=self._answer_group,
                args=(root, rows, generation),
                daemon=True,
                name=f"generate:{Path(root.path).name}",
            ).start()
        return generation

    def encode(self, request: PanelRequest, max_new_tokens: int, trim: bool | None = None) -> Prompt:
        """The request's conversation as its contestant reads it, fitted to its model's context
        (:func:`fit_prompt`; ``trim`` None: ``app.trim_history``). Runs without the model's lock, so a long
        conversation holds up no other request; only a model never loaded yet is loaded first, to learn its
        context. Raises :class:`ContextLengthExceeded` when it does not fit."""
        root, chain = self._context_known(request.contestant)
        return fit_prompt(
            self._tokenizer(chain, request.contestant),
            request.messages,
            is_chat_stage(request.contestant.stage),
            root.context,
            max_new_tokens,
            self.cfg.app.trim_history if trim is None else trim,
            request.template_kwargs,
        )

    def _context_known(self, contestant: Contestant) -> tuple[_Root, list[dict]]:
        """The contestant's root and chain, its model loaded first when never loaded yet (to learn its context)."""
        root, chain = self._root_for(contestant)
        if not root.context_known:
            with root.lock:
                self._prepare(root, chain, contestant)
        return root, chain

    def context_length(self, contestant: Contestant) -> int | None:
        """The context length the pool holds the contestant's prompts to (None: its model has none), read from
        its model's config when the model is not loaded yet (nothing is loaded for it)."""
        from transformers import AutoConfig

        root = self._root_for(contestant)[0]
        if root.context_known:
            return root.context
        return context_of(
            AutoConfig.from_pretrained(root.path, trust_remote_code=trust_remote_code(contestant.run_dir))
        )

    def tokenizer_for(self, contestant: Contestant):
        """The tokenizer the pool encodes the contestant's prompts with."""
        return self._tokenizer(self._root_for(contestant)[1], contestant)

    def fit_ids(self, contestant: Contestant, ids: list[int], max_new_tokens: int) -> Prompt:
        """A prompt given as token ids (``/v1/completions``), whole: :class:`ContextLengthExceeded` when it
        does not fit the model's context with ``max_new_tokens`` to spare (it is never cut)."""
        context = self._context_known(contestant)[0].context
        if context and len(ids) + max_new_tokens > context:
            raise ContextLengthExceeded(len(ids), max_new_tokens, context)
        return Prompt(list(ids))

    def ready(self, contestant: Contestant) -> bool:
        """Whether the contestant can answer without loading anything (its model and adapters are loaded)."""
        if contestant.endpoint is not None:
            return True
        try:
            root, chain = self._root_for(contestant)
        except Exception:  # noqa: BLE001 - a broken checkpoint is not ready
            return False
        return root.loaded and all(entry["weights"] in root.adapters for entry in chain[1:])

    def score(self, contestant: Contestant, sequences: list[list[int]], top: int) -> list:
        """The contestant's log-probabilities of each sequence's tokens, and the ``top`` most likely tokens at
        each position, from one forward pass per sequence in its model's process
        (:func:`app.serving.model_process.score_sequences`)."""
        root, chain = self._root_for(contestant)
        with root.lock:
            root.last_used = time.monotonic()
            prepared = self._prepare(root, chain, contestant)
            worker = self._take(root)
        try:
            return worker.request("score", prepared.adapters, sequences, top)
        finally:
            self._release(root)

    def _answer_group(self, root: _Root, rows: list, generation: Generation) -> None:
        encoded = []
        for panel, request, chain in rows:  # before the model's lock: other requests to it go on meanwhile
            try:
                encoded.append(
                    (panel, request, chain, request.prompt or self.encode(request, generation.decoding.max_new_tokens))
                )
            except Exception as err:  # noqa: BLE001 - this panel's checkpoint or prompt is broken
                generation.fail(panel, err)
        if not encoded:
            return
        ready = []
        with root.lock:
            root.last_used = time.monotonic()
            for panel, request, chain, prompt in encoded:
                try:
                    prepared = self._prepare(root, chain, request.contestant)
                    if request.raw:  # a continuation as generated (PanelStreamer: as a chat stage's)
                        prepared = replace(prepared, chat=True)
                    ready.append((panel, prepared, prompt.ids, request.stop))
                    generation.update(
                        panel,
                        serving=self._serving_record(root) | request.contestant.provenance,  # a run in training
                        prompt_tokens=len(prompt.ids),
                        dropped_messages=prompt.dropped,
                    )
                except Exception as err:  # noqa: BLE001 - this panel's checkpoint is broken
                    generation.fail(panel, err)
            if not ready:
                return
            worker = self._take(root)
        try:
            self._generate_batch(worker, ready, generation)
        except Exception as err:  # noqa: BLE001 - find which panel it was: retry them one by one
            if len(ready) == 1 or not worker.alive:  # (its process died: every unfinished panel failed)
                for panel, *_ in ready:
                    if not generation.answers[panel].done:
                        generation.fail(panel, err)
            else:
                for row in ready:
                    generation.update(row[0], text="", n_tokens=0, first_token_s=None, done=False, finish_reason=None)
                    try:
                        self._generate_batch(worker, [row], generation)
                    except Exception as single_err:  # noqa: BLE001
                        generation.fail(row[0], single_err)
        finally:
            self._release(root)

    def _take(self, root: _Root) -> ModelProcess:
        """``root``'s worker, counted as in use until :meth:`_release` (the caller holds ``root.lock``)."""
        root.active += 1
        return root.worker

    def _release(self, root: _Root) -> None:
        """A request to ``root``'s worker is over: a worker that died is dropped (a new one starts for the next
        question), and idle models beyond the limit are."""
        with root.lock:
            root.active -= 1
            if not root.loaded:
                root.unload()
        self._evict()

    def _generate_batch(self, worker: ModelProcess, rows: list, generation: Generation) -> None:
        """These rows, each with its own adapters, streamed into their panels; the model process decodes them
        in one batch with the other requests it is answering."""
        tokenizer = rows[0][1].tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        eos_ids = {t for t in (prepared.tokenizer.eos_token_id for _, prepared, _, _ in rows) if t is not None}
        streamer = PanelStreamer(
            generation,
            [panel for panel, _, _, _ in rows],
            [prepared.tokenizer for _, prepared, _, _ in rows],
            eos_ids,
            [prepared.chat for _, prepared, _, _ in rows],
            [stop for _, _, _, stop in rows],
        )

        def on_tokens(steps: list[list[int | None]]) -> bool:
            streamer.put(steps)
            # every row ended (a stop string, the next turn's marker), or the reader cancelled: stop it
            return streamer.all_finished or generation.cancelled.is_set()

        worker.generate(
            [(prepared.adapters, ids) for _, prepared, ids, _ in rows],
            generation.decoding.settings(),
            pad,
            sorted(eos_ids),
            on_tokens,
        )
        streamer.end()

    # --- loading -------------------------------------------------------------------------------
    def _root_for(self, contestant: Contestant) -> tuple[_Root, list[dict]]:
        """The contestant's root and chain of checkpoints, each with its weights' identity (read again when
        the run's manifest changes)."""
        try:
            manifest = os.stat(Path(contestant.run_dir) / "manifest.json")
            stamp = (manifest.st_ino, manifest.st_mtime_ns, manifest.st_size)
        except OSError:
            stamp = None  # (stage_chain says what is wrong)
        cache_key = (str(contestant.run_dir), contestant.stage)
        with self._lock:
            cached = self._chains.get(cache_key)
        if cached is None or stamp is None or cached[0] != stamp:
            chain = [
                entry | {"weights": weights_identity(Path(entry["abspath"]))}
                for entry in stage_chain(contestant.run_dir, contestant.stage)
            ]
            cached = (stamp, chain)
            with self._lock:
                self._chains[cache_key] = cached
        chain = cached[1]
        key = chain[0]["weights"]
        with self._lock:
            root = self._roots.get(key)
        if root is None:
            reference = self._reference(contestant, chain[0])
            with self._lock:
                root = self._roots.setdefault(key, _Root(key=key, path=chain[0]["abspath"], reference=reference))
        return root, chain

    def _reference(self, contestant: Contestant, root: dict) -> str | None:
        """The full model ``root`` was trained from (cpt: its run's base), when held as a difference."""
        if not self._delta or root["kind"] != "full" or not root.get("parent"):
            return None
        parent = stage_chain(contestant.run_dir, root["parent"])
        return parent[0]["abspath"] if len(parent) == 1 else None

    def _prepare(self, root: _Root, chain: list[dict], contestant: Contestant) -> _Prepared:
        """Make ``contestant`` ready to answer on ``root`` (the caller holds ``root.lock``)."""
        if not root.loaded:
            root.unload()
            root.slot = self._free_slot()
            root.worker = ModelProcess(
                root.path,
                str(self.device),
                self.dtype,
                self.cfg.app.cpu_threads,
                trust_remote_code(contestant.run_dir),
                setting=f"checkpoint {contestant.checkpoint_id}",
                cpus=None if root.slot is None else self._cpu_slots[root.slot],
                cache_dir=self._cache_dir,
                reference=root.reference,
                max_batch_rows=self.cfg.app.max_batch_rows,
            )
            root.context, root.context_known = root.worker.context, True
        adapters = tuple(self._attach(root, entry) for entry in chain[1:])
        return _Prepared(
            adapters=adapters,
            tokenizer=self._tokenizer(chain, contestant),
            chat=is_chat_stage(contestant.stage),
        )

    def _serving_record(self, root: _Root) -> dict:
        """How ``root``'s model answers (stored with each answer): exact, or as its reference plus a
        difference of ``app.delta_bits``, on this device in this dtype."""
        held = {"mode": "delta", "bits": self.cfg.app.delta_bits} if root.worker.held_as_delta else {"mode": "exact"}
        return held | {"device": str(self.device), "dtype": str(self.dtype).removeprefix("torch.")}

    def _attach(self, root: _Root, entry: dict) -> str:
        """The adapter in ``entry["abspath"]`` as a named adapter on ``root`` (loaded once)."""
        key = entry["weights"]
        if key not in root.adapters:
            name = self._new_name("adapter")
            root.worker.request("attach", name, entry["abspath"])
            root.adapters[key] = name
        return root.adapters[key]

    def _tokenizer(self, chain: list[dict], contestant: Contestant):
        """The contestant's own tokenizer when its stage saved one (every stage trained here does)."""
        path = tokenizer_dir(chain)
        with self._lock:
            tokenizer = self._tokenizers.get(path)
        if tokenizer is None:
            tokenizer = stage_tokenizer(contestant.run_dir, chain)
            with self._lock:
                tokenizer = self._tokenizers.setdefault(path, tokenizer)
        return tokenizer

    def _evict(self) -> None:
        """Stop the workers of least recently used idle full models beyond ``max_loaded_models``."""
        loaded = sorted(self._loaded_roots(), key=lambda r: r.last_used)
        excess = len(loaded) - self.max_loaded_models
        for root in loaded:
            if excess <= 0:
                break
            if root.lock.acquire(blocking=False):  # a root that is loading or generating is never dropped
                try:
                    if root.active == 0:
                        root.unload()
                        excess -= 1
                finally:
                    root.lock.release()

    def _free_slot(self) -> int | None:
        """The group of cores used by the fewest loaded models' workers (spreads the workers out)."""
        if not self._cpu_slots:
            return None
        with self._lock:
            used = [r.slot for r in self._roots.values() if r.slot is not None]
        return min(range(len(self._cpu_slots)), key=used.count)

    # --- helpers -------------------------------------------------------------------------------
    def _loaded_roots(self) -> list[_Root]:
        with self._lock:
            return [r for r in self._roots.values() if r.loaded]

    def _new_name(self, prefix: str) -> str:
        with self._lock:
            self._names += 1
            return f"{prefix}{self._names}"
