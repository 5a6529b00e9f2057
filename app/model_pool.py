"""Serving several checkpoints at once (DESIGN.md "Serving several checkpoints at once").

A run's four contestants share most of their weights: ``base/`` and ``cpt/`` are full models, ``sft/``
is a LoRA adapter on cpt and ``dpo/`` a LoRA adapter on cpt + sft. The pool therefore keeps

- each distinct full model once (a "root"; hard-linked copies of the same weights, as a run resumed
  with ``--from dpo`` has, count as one), and
- every LoRA stage as a named PEFT adapter on its root; a contestant made of several adapters (dpo =
  sft + dpo) gets one combined adapter whose low-rank factors are the concatenation of its parts, so
  its output is exactly that of the merged model.

One comparison's panels that share a root are generated as one batch in which each row uses its own
adapter (PEFT's mixed-adapter batches; a batch on a single adapter takes the plain, faster LoRA
forward), so the panels stream concurrently instead of one after the other; panels on different roots
run in parallel threads. Each root has a lock held while adapters are attached and while a batch
generates: requests from several browser sessions are safe and queue per root. Every answer samples
with its own seeded generator, so it depends on its seed only, not on the other panels or threads.

The UI never touches a model: it calls :meth:`ModelPool.generate` and reads the answers as they grow.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList
from transformers.generation.streamers import BaseStreamer

from app.contestants import Contestant
from training.config import Config
from training.errors import UserError
from training.modeling import (default_device, default_dtype, load_causal_lm, load_tokenizer, stage_chain,
                               tokenizer_dir)

BASE_ADAPTER = "__base__"  # PEFT's name for "no adapter" in a mixed-adapter batch
WEIGHT_SUFFIXES = (".safetensors", ".bin")
MAX_NEW_TOKENS_LIMIT = 4096  # a typo in the settings should not keep a model busy for an hour


@dataclass(frozen=True)
class Decoding:
    """How one comparison's answers are sampled; stored with every answer."""

    temperature: float  # 0 = greedy
    top_p: float
    max_new_tokens: int
    seed: int  # the seed actually used (a random one is drawn before this is built)

    def __post_init__(self) -> None:
        if not (isinstance(self.temperature, (int, float)) and math.isfinite(self.temperature)
                and 0 <= self.temperature <= 5):
            raise UserError(f"temperature {self.temperature!r} must be between 0 (greedy) and 5")
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UserError(f"top-p {self.top_p!r} must be in (0, 1]")
        if isinstance(self.max_new_tokens, bool) or not isinstance(self.max_new_tokens, int) \
                or not 1 <= self.max_new_tokens <= MAX_NEW_TOKENS_LIMIT:
            raise UserError(f"max new tokens {self.max_new_tokens!r} must be an integer 1-{MAX_NEW_TOKENS_LIMIT}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UserError(f"seed {self.seed!r} must be a non-negative integer")

    def as_dict(self) -> dict:
        return asdict(self)


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


@dataclass
class PanelRequest:
    """What one panel should answer: a contestant and the conversation it has seen, ending with the user."""

    contestant: Contestant
    messages: list[dict]


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
        for snapshot in self.stream(timeout):
            pass
        return snapshot


def describe_error(error: BaseException) -> str:
    """One line for a panel: a user error as is, anything else with its type."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    if isinstance(error, UserError):
        return text
    return f"{error.__class__.__name__}: {text}" if text else error.__class__.__name__


def use_cpu_threads(cfg: Config) -> None:
    """Set torch's threads per operation for serving on CPU (``app.cpu_threads``; process-wide)."""
    if cfg.app.cpu_threads > 0 and not (cfg.app.device or default_device()).startswith("cuda"):
        torch.set_num_threads(cfg.app.cpu_threads)


# --- sampling, stopping and streaming inside one batched generate ------------------------------------


class SeededSampler(LogitsProcessor):
    """Temperature + top-p sampling with one generator per row, as a logits processor.

    It leaves only the sampled token finite, so ``generate`` (run greedy) takes exactly that token.
    A row's tokens thus depend on its seed alone, not on which rows it was batched with, and the
    process-wide torch RNG (shared by concurrent threads) is never used.
    """

    def __init__(self, decoding: Decoding, rows: int, device: torch.device) -> None:
        self.temperature = decoding.temperature
        self.top_p = decoding.top_p
        self.generators = [torch.Generator(device=device).manual_seed(decoding.seed) for _ in range(rows)]

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        chosen = torch.empty(scores.shape[0], dtype=torch.long, device=scores.device)
        for row, generator in enumerate(self.generators):
            logits = scores[row]
            if self.temperature <= 0:
                chosen[row] = torch.argmax(logits)
                continue
            probs = torch.softmax(logits / self.temperature, dim=-1)
            if self.top_p < 1.0:
                sorted_probs, order = torch.sort(probs, descending=True)
                # keep the smallest set of tokens whose mass reaches top_p (the best token always stays)
                outside = torch.cumsum(sorted_probs, dim=-1) - sorted_probs >= self.top_p
                sorted_probs[outside] = 0.0
                probs = torch.zeros_like(probs).scatter_(0, order, sorted_probs)
            chosen[row] = torch.multinomial(probs, 1, generator=generator)[0]
        out = torch.full_like(scores, -math.inf)
        out.scatter_(1, chosen[:, None], 0.0)
        return out


class StopWhenCancelled(StoppingCriteria):
    def __init__(self, generation: Generation) -> None:
        self.generation = generation

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        return torch.full((input_ids.shape[0],), self.generation.cancelled.is_set(), dtype=torch.bool,
                          device=input_ids.device)


class PanelStreamer(BaseStreamer):
    """Receives each step's tokens for the whole batch and publishes every row's text as it grows."""

    def __init__(self, generation: Generation, rows: list[int], tokenizers: list, eos_ids: set[int]) -> None:
        self.generation = generation
        self.rows = rows  # batch row -> panel index
        self.tokenizers = tokenizers
        self.eos_ids = eos_ids
        self.ids: list[list[int]] = [[] for _ in rows]
        self.finished = [False] * len(rows)
        self.prompt_seen = False

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate hands over the prompt first
            self.prompt_seen = True
            return
        for i, token in enumerate(value.reshape(-1).tolist()):
            if self.finished[i]:
                continue
            panel = self.rows[i]
            first = {} if self.ids[i] or self.generation.answers[panel].first_token_s is not None \
                else {"first_token_s": self.generation.elapsed()}
            if token in self.eos_ids:
                self._finish(i, **first)
                continue
            self.ids[i].append(token)
            self.generation.update(panel, text=self._text(i), n_tokens=len(self.ids[i]), **first)

    def end(self) -> None:
        for i in range(len(self.rows)):
            if not self.finished[i]:
                self._finish(i)

    def _text(self, i: int) -> str:
        # byte-level tokens can end in the middle of a character: hold the partial character back
        return self.tokenizers[i].decode(self.ids[i], skip_special_tokens=True).rstrip("\ufffd")

    def _finish(self, i: int, **changes) -> None:
        self.finished[i] = True
        self.generation.update(self.rows[i], text=self._text(i), n_tokens=len(self.ids[i]), done=True,
                               latency_s=self.generation.elapsed(), **changes)


# --- the pool ------------------------------------------------------------------------------------


def weights_identity(path: Path) -> tuple:
    """A key equal for directories holding the same weight files (hard links share inodes)."""
    path = Path(path)
    files = sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []
    if not files:
        return ("path", str(path.resolve()))
    return tuple((st.st_dev, st.st_ino, st.st_size) for st in (os.stat(p) for p in files))


@dataclass
class _Root:
    """One full model in memory with the adapters attached to it."""

    key: tuple
    path: str
    lock: threading.Lock = field(default_factory=threading.Lock)
    model: torch.nn.Module | None = None
    adapters: dict[tuple, str] = field(default_factory=dict)  # adapter weights identity -> adapter name
    stacks: dict[tuple, str] = field(default_factory=dict)  # identities of a stack's parts -> its adapter
    direct: set[str] = field(default_factory=set)  # adapters some contestant uses on their own
    last_used: float = 0.0

    def unload(self) -> None:
        self.model = None
        self.adapters.clear()
        self.stacks.clear()
        self.direct.clear()


@dataclass
class _Served:
    """A contestant ready on its root: the adapter to activate and its tokenizer."""

    adapter: str
    tokenizer: object


class ModelPool:
    """The app's models: each full model once, LoRA stages as named adapters, answers streamed.

    ``max_loaded_models`` bounds the full models kept (least recently used ones are dropped when
    idle); ``device`` "" picks CUDA when there is one.
    """

    def __init__(self, cfg: Config, device: str | None = None, max_loaded_models: int | None = None) -> None:
        self.cfg = cfg
        self.device = torch.device(device or cfg.app.device or default_device())
        self.dtype = default_dtype(self.device)
        self.max_loaded_models = max_loaded_models or cfg.app.max_loaded_models
        self._lock = threading.Lock()  # guards the two dicts below, never held while loading
        # transformers builds models on the meta device by patching torch.nn globally while it loads:
        # two loads at once in two threads corrupt each other, so loading (never generating) is serial
        self._loading = threading.RLock()
        self._roots: dict[tuple, _Root] = {}
        self._tokenizers: dict[str, object] = {}
        self._names = 0

    # --- what is loaded ------------------------------------------------------------------------
    def loaded(self) -> dict[str, list[str]]:
        """Root model directory -> names of the adapters attached to it (for the benchmark and tests)."""
        with self._lock:
            roots = [r for r in self._roots.values() if r.model is not None]
        return {r.path: sorted(self._adapter_names(r)) for r in roots}

    def resident_bytes(self) -> int:
        """Bytes of every distinct parameter and buffer tensor the pool holds (shared storage once)."""
        seen, total = set(), 0
        with self._lock:
            models = [r.model for r in self._roots.values() if r.model is not None]
        for model in models:
            for tensor in list(model.parameters()) + list(model.buffers()):
                storage = tensor.untyped_storage()
                if storage.data_ptr() not in seen:
                    seen.add(storage.data_ptr())
                    total += storage.nbytes()
        return total

    def preload(self, contestants: list[Contestant]) -> list[str | None]:
        """Load the models and adapters of these contestants now; returns an error line or None for each."""
        errors = []
        for contestant in contestants:
            try:
                root, chain = self._root_for(contestant)
                with root.lock:
                    self._serve(root, chain, contestant)
                errors.append(None)
            except Exception as err:  # noqa: BLE001 - reported per contestant, like a panel error
                errors.append(describe_error(err))
        self._evict()
        return errors

    # --- generation ----------------------------------------------------------------------------
    def generate(self, requests: list[PanelRequest], decoding: Decoding) -> Generation:
        """Start answering every request; returns at once with a :class:`Generation` to read from.

        Requests on the same full model are batched together; different full models run in parallel.
        A failure (a checkpoint that does not load, a generation error) ends only its own panel.
        """
        generation = Generation([r.contestant.checkpoint_id for r in requests], decoding)
        groups: dict[tuple, tuple[_Root, list[tuple[int, PanelRequest, list[dict]]]]] = {}
        for panel, request in enumerate(requests):
            try:
                root, chain = self._root_for(request.contestant)
            except Exception as err:  # noqa: BLE001 - a broken checkpoint fails its panel only
                generation.fail(panel, err)
                continue
            groups.setdefault(root.key, (root, []))[1].append((panel, request, chain))
        for root, rows in groups.values():
            threading.Thread(target=self._answer_group, args=(root, rows, generation), daemon=True,
                             name=f"generate:{Path(root.path).name}").start()
        return generation

    def next_token_logits(self, contestant: Contestant, messages: list[dict]) -> torch.Tensor:
        """The contestant's logits for the token after ``messages`` (as served here, adapters and all)."""
        root, chain = self._root_for(contestant)
        with root.lock:
            served = self._serve(root, chain, contestant)
            ids = torch.tensor([self._encode(served.tokenizer, messages, limit=None)], device=self.device)
            with torch.inference_mode(), self._adapters_for(root, [served.adapter]) as routing:
                return root.model(input_ids=ids, **routing).logits[0, -1].float().cpu()

    def _answer_group(self, root: _Root, rows: list, generation: Generation) -> None:
        with root.lock:
            root.last_used = time.monotonic()
            ready = []
            for panel, request, chain in rows:
                try:
                    served = self._serve(root, chain, request.contestant)
                    limit = self._prompt_limit(root.model, generation.decoding.max_new_tokens)
                    ready.append((panel, served, self._encode(served.tokenizer, request.messages, limit)))
                except Exception as err:  # noqa: BLE001 - this panel's checkpoint or prompt is broken
                    generation.fail(panel, err)
            if not ready:
                return
            try:
                self._generate_batch(root, ready, generation)
            except Exception as err:  # noqa: BLE001 - find which panel it was: retry them one by one
                if len(ready) == 1:
                    generation.fail(ready[0][0], err)
                else:
                    for row in ready:
                        generation.update(row[0], text="", n_tokens=0, first_token_s=None, done=False)
                        try:
                            self._generate_batch(root, [row], generation)
                        except Exception as single_err:  # noqa: BLE001
                            generation.fail(row[0], single_err)
        self._evict()

    def _generate_batch(self, root: _Root, rows: list, generation: Generation) -> None:
        """One ``generate`` call for these rows, each with its own adapter (left-padded batch)."""
        decoding = generation.decoding
        tokenizer = rows[0][1].tokenizer
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        width = max(len(ids) for _, _, ids in rows)
        input_ids = torch.tensor([[pad] * (width - len(ids)) + ids for _, _, ids in rows], device=self.device)
        attention_mask = torch.tensor([[0] * (width - len(ids)) + [1] * len(ids) for _, _, ids in rows],
                                      device=self.device)
        eos_ids = {t for t in (served.tokenizer.eos_token_id for _, served, _ in rows) if t is not None}
        config = GenerationConfig(max_new_tokens=decoding.max_new_tokens, do_sample=False, pad_token_id=pad,
                                  eos_token_id=sorted(eos_ids) or None)
        kwargs = dict(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
            logits_processor=LogitsProcessorList([SeededSampler(decoding, len(rows), self.device)]),
            stopping_criteria=StoppingCriteriaList([StopWhenCancelled(generation)]),
            streamer=PanelStreamer(generation, [panel for panel, _, _ in rows],
                                   [served.tokenizer for _, served, _ in rows], eos_ids),
        )
        with torch.inference_mode(), self._adapters_for(root, [served.adapter for _, served, _ in rows]) as routing:
            root.model.generate(**kwargs, **routing)

    @contextlib.contextmanager
    def _adapters_for(self, root: _Root, adapters: list[str]):
        """Route each row through its adapter; yields the keyword arguments the forward needs for that.

        Rows that all use one adapter take PEFT's plain LoRA forward (that adapter made active, or every
        adapter disabled for the root's own model), about 40% less time per token than the mixed-batch
        forward; rows on several adapters take the mixed one (``adapter_names``). The caller holds
        ``root.lock``, so no other batch runs on the root meanwhile.
        """
        if not self._is_peft(root.model):
            yield {}
        elif len(set(adapters)) > 1:
            yield {"adapter_names": adapters}
        elif adapters[0] == BASE_ADAPTER:
            with root.model.disable_adapter():
                yield {}
        else:
            root.model.set_adapter(adapters[0], inference_mode=True)  # (leaves the modules in eval mode)
            yield {}

    # --- loading -------------------------------------------------------------------------------
    def _root_for(self, contestant: Contestant) -> tuple[_Root, list[dict]]:
        chain = stage_chain(contestant.run_dir, contestant.stage)
        key = weights_identity(Path(chain[0]["abspath"]))
        with self._lock:
            root = self._roots.get(key)
            if root is None:
                root = self._roots[key] = _Root(key=key, path=chain[0]["abspath"])
        return root, chain

    def _serve(self, root: _Root, chain: list[dict], contestant: Contestant) -> _Served:
        """Make ``contestant`` servable on ``root`` (the caller holds ``root.lock``)."""
        with self._loading:
            return self._load(root, chain, contestant)

    def _load(self, root: _Root, chain: list[dict], contestant: Contestant) -> _Served:
        if root.model is None:
            root.unload()
            root.model = load_causal_lm(root.path, trust_remote_code=self.cfg.model.trust_remote_code,
                                        dtype=self.dtype, setting=f"checkpoint {contestant.checkpoint_id}")
            root.model.to(self.device).eval()
        adapters = chain[1:]
        if not adapters:
            adapter = BASE_ADAPTER
        elif len(adapters) == 1:
            adapter = self._attach(root, adapters[0])
            root.direct.add(adapter)
        else:
            adapter = self._stack(root, adapters)
        return _Served(adapter=adapter, tokenizer=self._tokenizer(chain))

    def _attach(self, root: _Root, entry: dict) -> str:
        """The adapter in ``entry["abspath"]`` as a named adapter on ``root`` (loaded once)."""
        from peft import PeftModel

        key = weights_identity(Path(entry["abspath"]))
        if key in root.adapters:
            return root.adapters[key]
        name = self._new_name("adapter")
        if self._is_peft(root.model):
            root.model.load_adapter(entry["abspath"], adapter_name=name)
        else:
            root.model = PeftModel.from_pretrained(root.model, entry["abspath"], adapter_name=name)
        root.model.eval()  # new adapter modules start in training mode; mixed batches need eval mode
        root.adapters[key] = name
        return name

    def _stack(self, root: _Root, entries: list[dict]) -> str:
        """One adapter equal to all of ``entries`` active at once (dpo = sft + dpo).

        Its LoRA factors are the parts' factors concatenated ("cat", weights 1), so B·A of the stack is
        the sum of the parts' scaled B·A: exactly the model the later stage was trained on. Parts no
        contestant uses on their own are dropped afterwards; they live on inside the stack.
        """
        key = tuple(weights_identity(Path(entry["abspath"])) for entry in entries)
        if key not in root.stacks:
            parts = [self._attach(root, entry) for entry in entries]
            name = self._new_name("stack")
            root.model.add_weighted_adapter(parts, [1.0] * len(parts), name, combination_type="cat")
            root.model.set_adapter(name)  # (requests name their adapter; this only keeps PEFT quiet below)
            root.model.eval()
            root.stacks[key] = name
            for part_key, part in zip(key, parts):
                if part not in root.direct:
                    root.model.delete_adapter(part)
                    del root.adapters[part_key]
        return root.stacks[key]

    def _tokenizer(self, chain: list[dict]):
        """The contestant's own tokenizer when its stage saved one (every stage trained here does)."""
        path = tokenizer_dir(chain)
        with self._lock:
            tokenizer = self._tokenizers.get(path)
        if tokenizer is None:
            tokenizer = load_tokenizer(path, trust_remote_code=self.cfg.model.trust_remote_code)
            with self._lock:
                tokenizer = self._tokenizers.setdefault(path, tokenizer)
        return tokenizer

    def _evict(self) -> None:
        """Drop least recently used idle full models beyond ``max_loaded_models``."""
        with self._lock:
            loaded = sorted((r for r in self._roots.values() if r.model is not None), key=lambda r: r.last_used)
        excess = len(loaded) - self.max_loaded_models
        for root in loaded:
            if excess <= 0:
                break
            if root.lock.acquire(blocking=False):  # a root that is generating is never dropped
                try:
                    root.unload()
                    excess -= 1
                finally:
                    root.lock.release()
        if excess < len(loaded) - self.max_loaded_models:
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # --- helpers -------------------------------------------------------------------------------
    def _new_name(self, prefix: str) -> str:
        # PEFT adapter names become module keys: no dots or slashes, so checkpoint ids cannot be used
        with self._lock:
            self._names += 1
            return f"{prefix}{self._names}"

    @staticmethod
    def _is_peft(model) -> bool:
        return hasattr(model, "peft_config")

    def _adapter_names(self, root: _Root) -> list[str]:
        return list(root.model.peft_config) if self._is_peft(root.model) else []

    @staticmethod
    def _prompt_limit(model, max_new_tokens: int) -> int | None:
        """Longest prompt that leaves room for the answer within the model's context, if it has one."""
        context = getattr(model.config, "max_position_embeddings", None)
        return None if not context else max(16, context - max_new_tokens)

    @staticmethod
    def _encode(tokenizer, messages: list[dict], limit: int | None) -> list[int]:
        """Token ids of the conversation with the generation prompt; the oldest turns give way first."""
        messages = list(messages)
        while True:
            ids = list(tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"])
            if limit is None or len(ids) <= limit:
                return ids
            if len(messages) > 1:
                messages = messages[2:] if len(messages) > 2 else messages[1:]
                continue
            return ids[-limit:]  # one very long message: keep its end, next to the answer
