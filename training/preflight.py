"""The pre-flight every base model passes before any stage trains on it.

1. It loads (native architectures as they are; remote code only with ``model.trust_remote_code``).
2. One batch (two prompts of different length, left-padded) runs forward and every logit is finite.
3. One cached ``generate`` step runs, and the logits it computed with the key/value cache match those of a
   full forward pass over the same tokens: a broken cache (remote code written for the tuple caches of
   older transformers) fails here instead of quietly answering nonsense in the evaluation and the arena.

Each failure is one line naming the checkpoint, what failed and what to do; nothing is trained on a model
that fails. Old remote-code checkpoints typically fail 2 (buffers left uninitialised by the meta-device
load: NaN logits) or 3 (tuple caches, no ``GenerationMixin``).
"""

from __future__ import annotations

from pathlib import Path

import torch

from core.errors import UserError
from training.modeling import default_device, default_dtype, load_causal_lm, load_tokenizer

PROMPTS = ("问：高血压患者饮食上要注意什么？\n答：", "问：感冒了怎么办？\n答：")


class PreflightError(UserError):
    """A base model failed the pre-flight."""


def preflight(
    path: str | Path, trust_remote_code: bool = False, device: str | None = None, setting: str = "model.path"
) -> dict:
    """Run the pre-flight on the model in ``path``; return what it measured, raise :class:`PreflightError`."""
    device = device or default_device()
    dtype = default_dtype(device)
    where = f"{setting}={path}"
    fix = (
        'convert it with ./launch.sh import-model if it is a known legacy layout (docs/training.md, "Bring your own '
        'model"), or use a checkpoint of an architecture transformers implements'
    )
    model = load_causal_lm(path, trust_remote_code=trust_remote_code, dtype=dtype, setting=setting)
    try:
        tokenizer = load_tokenizer(path, trust_remote_code=trust_remote_code)
        model.to(device).eval()
        if (
            not hasattr(model, "generate")
            or not callable(getattr(model, "can_generate", None))
            or not model.can_generate()
        ):
            raise PreflightError(
                f"pre-flight of {where}: {type(model).__name__} cannot generate (it does not "
                f"inherit GenerationMixin); {fix}"
            )
        ids, mask = _batch(tokenizer, device)
        with torch.inference_mode():
            try:
                logits = model(input_ids=ids, attention_mask=mask).logits
            except Exception as err:  # noqa: BLE001 - whatever the modelling code raises is reported in one line
                raise PreflightError(
                    f"pre-flight of {where}: the forward pass failed ({_first_line(err)}); {fix}"
                ) from None
            real = logits[mask.bool()]
            if not torch.isfinite(real).all():
                bad = int((~torch.isfinite(real)).sum())
                raise PreflightError(
                    f"pre-flight of {where}: the forward pass gives non-finite logits ({bad} of "
                    f"{real.numel()} values NaN or infinite); {fix}"
                )
            cache_gap = _cached_step(model, tokenizer, ids[1:], where, fix)
    finally:
        del model
    return {"device": str(device), "dtype": str(dtype).removeprefix("torch."), "cache_max_abs_diff": cache_gap}


def _batch(tokenizer, device) -> tuple[torch.Tensor, torch.Tensor]:
    encoded = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in PROMPTS]
    width = max(len(e) for e in encoded)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    ids = torch.tensor([[pad] * (width - len(e)) + e for e in encoded], device=device)
    mask = torch.tensor([[0] * (width - len(e)) + [1] * len(e) for e in encoded], device=device)
    return ids, mask


def _cached_step(model, tokenizer, ids: torch.Tensor, where: str, fix: str) -> float:
    """Generate two tokens with the cache and compare the second step's logits with a full forward pass."""
    try:
        out = model.generate(
            input_ids=ids,
            attention_mask=torch.ones_like(ids),
            max_new_tokens=2,
            do_sample=False,
            use_cache=True,
            return_dict_in_generate=True,
            output_logits=True,
            pad_token_id=tokenizer.pad_token_id,
            eos_token_id=None,
        )
    except Exception as err:  # noqa: BLE001
        raise PreflightError(
            f"pre-flight of {where}: a cached generate step failed ({_first_line(err)}); {fix}"
        ) from None
    cached = out.logits[1][0].float()
    full = model(input_ids=out.sequences[:, :-1]).logits[0, -1].float()
    if not (torch.isfinite(cached).all() and torch.isfinite(full).all()):
        raise PreflightError(f"pre-flight of {where}: generation gives non-finite logits; {fix}")
    gap = float((cached - full).abs().max())
    scale = float(full.abs().max()) or 1.0
    tolerance = 1e-3 if full.dtype == torch.float32 and model.dtype == torch.float32 else 5e-2
    if gap > tolerance * max(scale, 1.0):
        raise PreflightError(
            f"pre-flight of {where}: the key/value cache gives other logits than a full forward "
            f"pass (max difference {gap:.3g}), so its cached generation is wrong; {fix}"
        )
    return round(gap, 8)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0] if text else ''}"[:300]
