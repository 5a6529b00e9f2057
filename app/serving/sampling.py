"""How answers are sampled: the decoding settings of a request, and the sampler of a model process's
batches, each row with its own settings and seeded generator.

:class:`Decoding` is built in the app's process (checked against ``app.decoding``'s limits) and sent
to the model processes as a dict; :class:`SeededSampler` runs there (:mod:`app.serving.batching`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import InitVar, asdict, dataclass
from functools import partial

import torch
from transformers import LogitsProcessor

from core.config import DecodingConfig
from core.errors import UserError

# later steps of an answer reach the pool at most this often: text still streams smoothly, and the pool's
# process, woken once per message, leaves the cores to the model processes (a wake-up per token per
# process slowed the first token of the other processes' panels)
STREAM_INTERVAL_S = 0.05
NUCLEUS_CANDIDATES = 64  # tokens sorted for top-p first; all of them when these hold less than top_p
MAX_REPETITION_PENALTY = 10.0  # beyond it every seen token is all but forbidden: surely a typo


@dataclass(frozen=True)
class Decoding:
    """How one comparison's answers are sampled; stored with every answer.

    ``limits``: the settings whose ``max_temperature`` and ``max_new_tokens_limit`` bound these
    (``app.decoding``; the config's defaults when not given), the same bounds the Compare tab shows.
    """

    temperature: float  # 0 = greedy
    top_p: float
    max_new_tokens: int
    seed: int  # the seed actually used (a random one is drawn before this is built)
    # serve's chat extras (vLLM's sampling parameters; the arena leaves them off): applied in the order of
    # transformers' and vLLM's samplers, the penalty on the model's logits, then temperature, top-k, top-p, min-p
    top_k: int = 0  # sample from the k most likely tokens only; 0 (or -1, as vLLM) = all
    min_p: float = 0.0  # drop tokens less likely than min_p times the most likely one; 0 = none
    # > 1 makes every token already in the prompt or the answer less likely (transformers' and vLLM's rule:
    # a positive logit divided by it, a negative one multiplied); 1 = none
    repetition_penalty: float = 1.0
    limits: InitVar[DecodingConfig | None] = None

    def __post_init__(self, limits: DecodingConfig | None) -> None:
        limits = limits or DecodingConfig()
        if not (
            isinstance(self.temperature, (int, float))
            and math.isfinite(self.temperature)
            and 0 <= self.temperature <= limits.max_temperature
        ):
            raise UserError(
                f"temperature {self.temperature!r} must be between 0 (greedy) and "
                f"{limits.max_temperature} (app.decoding.max_temperature)"
            )
        if not (isinstance(self.top_p, (int, float)) and 0 < self.top_p <= 1):
            raise UserError(f"top-p {self.top_p!r} must be in (0, 1]")
        if (
            isinstance(self.max_new_tokens, bool)
            or not isinstance(self.max_new_tokens, int)
            or not 1 <= self.max_new_tokens <= limits.max_new_tokens_limit
        ):
            raise UserError(
                f"max new tokens {self.max_new_tokens!r} must be an integer "
                f"1-{limits.max_new_tokens_limit} (app.decoding.max_new_tokens_limit)"
            )
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or not 0 <= self.seed < 2**63:
            raise UserError(f"seed {self.seed!r} must be a non-negative integer")
        if isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < -1:
            raise UserError(f"top_k {self.top_k!r} must be an integer: 0 or -1 (all tokens), or k >= 1")
        if not (isinstance(self.min_p, (int, float)) and not isinstance(self.min_p, bool) and 0 <= self.min_p <= 1):
            raise UserError(f"min_p {self.min_p!r} must be in [0, 1] (0 = off)")
        if not (
            isinstance(self.repetition_penalty, (int, float))
            and not isinstance(self.repetition_penalty, bool)
            and math.isfinite(self.repetition_penalty)
            and 0 < self.repetition_penalty <= MAX_REPETITION_PENALTY
        ):
            raise UserError(
                f"repetition_penalty {self.repetition_penalty!r} must be in (0, {MAX_REPETITION_PENALTY}] (1 = off)"
            )

    def as_dict(self) -> dict:
        """The settings as stored with an answer: the chat extras only when set (the arena's records keep
        their four settings)."""
        return {
            name: value
            for name, value in asdict(self).items()
            if name not in EXTRAS or value != self.__dataclass_fields__[name].default
        }

    def settings(self) -> dict:
        """Every setting, as the model process samples with them (:class:`SeededSampler`)."""
        return asdict(self)

    def for_choice(self, i: int) -> Decoding:
        """The decoding of choice ``i`` of a request for several (``n``): seed + i (mod 2**63), so choice 0 is
        the request's own answer and the set is reproducible from the seed."""
        choice = copy.copy(self)  # (not dataclasses.replace: that would check it against the default limits)
        object.__setattr__(choice, "seed", (self.seed + i) % 2**63)
        return choice


EXTRAS = ("top_k", "min_p", "repetition_penalty")


# --- in the model process --------------------------------------------------------------------------


class SeededSampler(LogitsProcessor):
    """Sampling with each row's own settings and generator, as a logits processor: the repetition penalty,
    then temperature, top-k, top-p and min-p (the order of transformers' and vLLM's samplers; greedy takes
    the penalised argmax).

    ``settings[i]``: row i's decoding (:meth:`Decoding.settings`); ``pads[i]``: its left padding, which the
    repetition penalty leaves out; ``generators[i]``: its seeded generator, which the model process keeps
    from one batch to the next (:mod:`app.serving.batching`). It leaves only the sampled token finite, so
    ``generate`` (run greedy) takes exactly that token: a row's tokens depend on its own settings and seed
    alone, not on which rows it was batched with. Should a row fail, the generators are put back as they
    were before the step, so a row retried on its own draws what it would have drawn.
    """

    def __init__(self, settings: list[dict], pads: list[int], generators: list[torch.Generator]) -> None:
        self.settings = settings
        self.pads = pads
        self.generators = generators

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        scores = scores.float()
        penalised = [i for i, setting in enumerate(self.settings) if setting["repetition_penalty"] != 1]
        if penalised:
            scores = scores.clone()
            for i in penalised:
                row = input_ids[i : i + 1, self.pads[i] :]
                scores[i : i + 1] = penalise_repetition(scores[i : i + 1], row, self.settings[i]["repetition_penalty"])
        chosen = torch.argmax(scores, dim=-1)  # the greedy rows' tokens
        drawing = [i for i, setting in enumerate(self.settings) if setting["temperature"] > 0]
        if drawing:
            states = [self.generators[i].get_state() for i in drawing]
            try:
                chosen[drawing] = self._draw(drawing, scores[drawing])
            except BaseException:
                for i, state in zip(drawing, states):
                    self.generators[i].set_state(state)
                raise
        out = torch.full_like(scores, -math.inf)
        return out.scatter_(1, chosen[:, None], 0.0)

    def _draw(self, rows: list[int], scores: torch.Tensor) -> torch.Tensor:
        """The tokens of these sampled rows (``scores``: their logits, penalised): temperature and top-k for all of
        them at once, then their nuclei (:func:`sample`, done together for the rows whose nucleus is among the
        ``NUCLEUS_CANDIDATES`` most likely tokens), and one draw each with its own generator."""
        settings = [self.settings[i] for i in rows]
        column = partial(torch.tensor, dtype=scores.dtype, device=scores.device)
        logits = scores / column([s["temperature"] for s in settings])[:, None]
        ks = [s["top_k"] if 0 < s["top_k"] < scores.shape[-1] else 0 for s in settings]
        if any(ks):  # (the k-th highest logit of each row; -inf, nothing cut, where top-k is off)
            highest = torch.topk(logits, max(ks), dim=-1).values
            kth = highest.gather(1, torch.tensor([[max(k, 1) - 1] for k in ks], device=scores.device))
            kth = kth.masked_fill(torch.tensor([[k == 0] for k in ks], device=scores.device), -math.inf)
            logits = logits.masked_fill(logits < kth, -math.inf)
        probs = torch.softmax(logits, dim=-1)
        top_p, min_p = column([s["top_p"] for s in settings])[:, None], column([s["min_p"] for s in settings])[:, None]
        best, order = torch.topk(probs, min(NUCLEUS_CANDIDATES, probs.shape[-1]))
        outside = torch.cumsum(best, dim=-1) - best >= top_p
        outside |= ~min_p_keeps(best, min_p)
        weights = best.masked_fill(outside, 0.0)
        in_candidates = (best.sum(dim=-1, keepdim=True) >= top_p)[:, 0].tolist()
        return torch.cat(
            [
                order[j, torch.multinomial(weights[j], 1, generator=self.generators[i])]
                if settings[j]["top_p"] < 1.0 and in_candidates[j]
                else sample(probs[j], settings[j]["top_p"], settings[j]["min_p"], self.generators[i])
                for j, i in enumerate(rows)
            ]
        )


def sample(probs: torch.Tensor, top_p: float, min_p: float, generator: torch.Generator) -> torch.Tensor:
    """One token from ``probs`` restricted to its top-p nucleus (the smallest set of most likely tokens whose
    mass reaches top_p; the best token always stays), then to the tokens min-p keeps there."""
    if top_p >= 1.0:
        if min_p > 0:
            probs = probs.masked_fill(~min_p_keeps(probs, min_p), 0.0)
        return torch.multinomial(probs, 1, generator=generator)
    # the nucleus is almost always among the most likely few dozen tokens: sort only those when it is
    best, order = torch.topk(probs, min(NUCLEUS_CANDIDATES, probs.shape[-1]))
    if best.sum() < top_p:
        best, order = torch.sort(probs, descending=True)
    outside = torch.cumsum(best, dim=-1) - best >= top_p
    if min_p > 0:
        outside |= ~min_p_keeps(best, min_p)
    return order[torch.multinomial(best.masked_fill(outside, 0.0), 1, generator=generator)]


def penalise_repetition(scores: torch.Tensor, input_ids: torch.Tensor, penalty: float) -> torch.Tensor:
    """``scores`` ([rows, vocab] logits) with each token of ``input_ids`` made less likely (``penalty`` > 1):
    a positive logit divided by ``penalty``, a negative one multiplied (transformers'
    ``RepetitionPenaltyLogitsProcessor``, vLLM's ``repetition_penalty``)."""
    seen = torch.gather(scores, 1, input_ids)
    return scores.scatter(1, input_ids, torch.where(seen < 0, seen * penalty, seen / penalty))


def keep_top_k(scores: torch.Tensor, k: int) -> torch.Tensor:
    """``scores`` with all but the ``k`` highest of each row at -inf (ties at the k-th all stay, as in
    transformers' ``TopKLogitsWarper``); k <= 0: unchanged."""
    if k <= 0 or k >= scores.shape[-1]:
        return scores
    kth = torch.topk(scores, k, dim=-1).values[..., -1:]
    return scores.masked_fill(scores < kth, -math.inf)


def min_p_keeps(probs: torch.Tensor, min_p: float) -> torch.Tensor:
    """Which tokens min-p keeps: those at least ``min_p`` times as likely as the most likely one (transformers'
    ``MinPLogitsWarper``, vLLM's ``min_p``). ``probs`` may be any subset holding the most likely token."""
    return probs >= min_p * probs.max(dim=-1, keepdim=True).values
