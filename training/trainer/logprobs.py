"""How the TRL stages (sft, dpo) get their per-token log-probabilities: padding-free and, off Triton, plain.

TRL 1.16's SFT and DPO trainers compute every loss through the fused LM head they patch onto the model
(``model(..., labels=..., fused_lm_head=True)`` returns per-token log-probabilities, entropy, top-1 hits).
Its kernel is written for Triton; elsewhere (a CPU, a GPU without Triton) a plain-torch fallback projects
every position through the LM head, prompt and padding included, and again in the backward pass. On the
demo model that is most of a step. Two settings of each TRL stage change how that forward is computed,
never what it returns:

- ``lm_head_loss`` (``sft.lm_head_loss``, ``dpo.lm_head_loss``): ``fused`` keeps TRL's kernel; ``plain``
  projects only the positions that carry a label through the LM head in float32 and takes ``log_softmax``
  (the logits of the scored tokens only, autograd as usual); ``auto`` (default) is ``fused`` where Triton
  serves the device, ``plain`` elsewhere.
- ``padding_free`` (``sft.padding_free``, ``dpo.padding_free``): a right-padded batch (TRL's SFT and DPO
  collators pad on the right) runs through the backbone as one row of its real tokens, with position ids
  restarting at every sequence, and the per-token outputs are put back in the padded shape. Attention
  stays within each sequence: the varlen kernels of flash attention take the boundaries (``cu_seq_lens``);
  SDPA, which would attend over the whole row under a block-diagonal mask (quadratic in the row's length),
  is replaced while training by ``varlen_sdpa``, causal SDPA on each sequence in turn.

Both keep TRL's loss code as it is: the outputs are the fused head's (``FusedCausalLMOutput``), equal to
its values to float precision (``tests/training/test_training_speed.py``). The unpadded row is what TRL's own
padding-free SFT collator builds; TRL 1.16 turns padding-free off for DPO, this does it for both.
"""

from __future__ import annotations

import importlib.util
import types

import torch
import torch.nn.functional as F

from core.config import LM_HEAD_LOSS
from core.errors import UserError

# the per-token fields of TRL's FusedCausalLMOutput this module computes (all of them)
PER_TOKEN = ("log_probs", "entropy", "log_sum_sq_probs", "mean_logits", "is_top1", "label_mask")


def triton_serves(device: torch.device) -> bool:
    """Whether TRL's fused LM-head kernel runs on Triton on ``device`` (else it falls back to plain torch)."""
    return importlib.util.find_spec("triton") is not None and device.type in ("cuda", "xpu")


def plain_head_supported(model) -> str | None:
    """Why the plain LM-head path cannot stand in for TRL's kernel on ``model`` (None when it can): it scores
    logits as they come out of the LM head, with no softcapping or scaling."""
    text_config = model.config.get_text_config()
    for key in ("final_logit_softcapping", "logit_scale", "output_multiplier", "lm_head_multiplier", "logits_scaling"):
        if getattr(text_config, key, None) not in (None, 1.0):
            return f"the model's config sets {key}"
    if getattr(text_config, "output_router_logits", False):
        return "the model is a mixture of experts with a router loss"
    return None


def resolve_lm_head_loss(setting: str, model, device: torch.device) -> str:
    """``fused`` or ``plain`` for a stage's ``lm_head_loss`` setting on this model and device."""
    if setting not in LM_HEAD_LOSS:
        raise UserError(f"lm_head_loss={setting!r}: expected one of {', '.join(LM_HEAD_LOSS)}")
    if setting == "fused" or (setting == "auto" and triton_serves(device)):
        return "fused"
    unsupported = plain_head_supported(model)
    if unsupported and setting == "plain":
        raise UserError(
            f"lm_head_loss=plain cannot score this model ({unsupported}): set the stage's lm_head_loss to auto or fused"
        )
    return "fused" if unsupported else "plain"


def patch_trainer_logprobs(trainer, section) -> dict:
    """Re-patch the forward TRL's trainer gave its model (after ``add_fused_lm_head``) as the stage's config
    ``section`` (``cfg.sft``, ``cfg.dpo``, ``cfg.kto``) says. Returns the stage's record of it, kept up to date while it
    trains: the head chosen, padding-free or not, and the positions the scored batches had, real and with
    padding (:func:`logprob_metrics`)."""
    from peft import PeftModel

    model = trainer.model.get_base_model() if isinstance(trainer.model, PeftModel) else trainer.model
    head = resolve_lm_head_loss(section.lm_head_loss, model, trainer.args.device)
    record = {"lm_head_loss": head, "padding_free": section.padding_free, "positions": {"real": 0, "padded": 0}}
    set_logprob_forward(
        model,
        head=head,
        padding_free=section.padding_free,
        positions=record["positions"],
        outputs=trainer_outputs(trainer),
    )
    return record


def trainer_outputs(trainer) -> tuple[str, ...]:
    """The fused-head fields TRL 1.16's trainers read (sft_trainer.py / dpo_trainer.py, ``add_fused_lm_head``):
    SFT the entropy and top-1 hits, DPO also the mean logit and, for WPO weighting, the log sum of squared
    probabilities, KTO the entropy and the mean logit."""
    from trl import DPOTrainer, KTOTrainer

    if isinstance(trainer, KTOTrainer):
        return ("log_probs", "entropy", "mean_logits")
    if isinstance(trainer, DPOTrainer):
        return ("log_probs", "entropy", "mean_logits", "is_top1") + (
            ("log_sum_sq_probs",) if getattr(trainer, "use_weighting", False) else ()
        )
    return ("log_probs", "entropy", "is_top1")


def logprob_metrics(record: dict) -> dict:
    """For stage.json: the head, padding-free or not, the share of the padded batches' positions that were
    padding (what padding-free leaves out; policy and reference forwards alike) and whatever else the stage
    added to the record (dpo: the reference precomputation)."""
    positions = record["positions"]
    share = 1 - positions["real"] / positions["padded"] if positions["padded"] else 0.0
    return {**{k: v for k, v in record.items() if k != "positions"}, "padding_share": round(share, 4)}


def set_logprob_forward(
    model, *, head: str, padding_free: bool, positions: dict | None = None, outputs: tuple[str, ...] = PER_TOKEN
) -> None:
    """Wrap ``model.forward`` (TRL's fused-head forward, patched by ``add_fused_lm_head``) so that
    ``fused_lm_head=True`` calls go through ``head`` (``fused`` or ``plain``, computing the fields of
    ``outputs``) and, with ``padding_free``, through one unpadded row; ``positions`` counts their real and
    padded positions. Calls without ``fused_lm_head`` (generation, the evaluation) are untouched."""
    fused_forward = model.forward
    if padding_free and model.config._attn_implementation == "sdpa":
        _register_varlen_sdpa()
        model.set_attn_implementation(VARLEN_SDPA)
    if getattr(fused_forward, "_chimed_logprobs", False):
        fused_forward = fused_forward._chimed_inner
    if head == "plain":

        def scored(**kwargs):
            return _plain_head(model, outputs=outputs, **kwargs)
    else:

        def scored(**kwargs):
            return fused_forward(fused_lm_head=True, **kwargs)

    def forward(self, *args, fused_lm_head=False, **kwargs):
        if not fused_lm_head:
            return fused_forward(*args, **kwargs)
        if args:
            kwargs["input_ids"] = args[0]
        mask = kwargs.get("attention_mask")
        if positions is not None and mask is not None:
            positions["real"] += int(mask.sum())
            positions["padded"] += mask.numel()
        if padding_free and _right_padded(mask):
            return _unpadded(scored, varlen=self.config._attn_implementation == VARLEN_SDPA, **kwargs)
        return scored(**kwargs)

    forward._chimed_logprobs = True
    forward._chimed_inner = fused_forward
    model.forward = types.MethodType(forward, model)


def _right_padded(attention_mask) -> bool:
    """A 2-D mask with padding, every row's real tokens first (a prefix)."""
    if attention_mask is None or attention_mask.dim() != 2 or bool(attention_mask.all()):
        return False
    keep = attention_mask.bool()
    return bool((keep[:, 1:] <= keep[:, :-1]).all()) and bool(keep[:, 0].all())


def _unpadded(
    scored, *, varlen: bool, input_ids, attention_mask, labels, num_items_in_batch=None, position_ids=None, **kwargs
):
    """Score a right-padded batch as one row of its real tokens and scatter the outputs back.

    Position ids restart at 0 for each sequence and ``cu_seq_lens`` mark where each starts (the varlen
    attention kernels read them; eager attention builds a block-diagonal mask from the positions); the
    first token of every sequence gets label -100 in the row, so no sequence is scored from the end of the
    one before it. Output ``[b, t]`` (the log-probability of token
    ``t + 1`` of row ``b``) is row position ``flat(b, t + 1) - 1``.
    """
    keep = attention_mask.bool()
    lengths = keep.sum(dim=1)
    positions = (keep.long().cumsum(dim=1) - 1)[keep][None]
    row_labels = labels[keep][None].clone()
    row_labels[positions == 0] = -100
    cu_seq_lens = torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)
    kwargs.update(
        cu_seq_lens_q=cu_seq_lens,
        cu_seq_lens_k=cu_seq_lens,
        max_length_q=int(lengths.max()),
        max_length_k=int(lengths.max()),
    )
    if varlen:
        kwargs["attention_mask"] = _NO_MASK.to(input_ids.device)
    out = scored(
        input_ids=input_ids[keep][None],
        position_ids=positions,
        labels=row_labels,
        num_items_in_batch=num_items_in_batch,
        **kwargs,
    )
    for name in PER_TOKEN:
        value = getattr(out, name, None)
        if value is None:
            continue
        by_token = torch.cat([value.new_zeros(1), value[0]])  # index k: about token k of the row
        padded = value.new_zeros(keep.shape)
        padded[keep] = by_token
        setattr(out, name, padded[:, 1:])
    return out


def _plain_head(model, *, outputs: tuple[str, ...], labels, num_items_in_batch=None, shift_labels=None, **kwargs):
    """TRL's fused-head outputs computed plainly: the backbone, then the LM head (float32, outside autocast)
    on the positions whose next-token label is not -100 only, ``log_softmax`` and the label's entry. The
    fields of ``outputs`` TRL reads besides (entropy, mean logit, top-1 hit, log sum of squared
    probabilities) come from the same logits, without gradient; the others stay None, as in TRL's."""
    from trl.trainer.utils import FusedCausalLMOutput

    kwargs["use_cache"] = False
    hidden = model.base_model(**kwargs).last_hidden_state
    if shift_labels is None:
        hidden, targets = hidden[:, :-1], labels[:, 1:]
    else:
        targets = shift_labels
    lm_head = model.get_output_embeddings()
    targets = targets.to(lm_head.weight.device)
    mask = targets != -100
    picked = targets[mask]
    with torch.autocast(hidden.device.type, enabled=False):
        bias = None if lm_head.bias is None else lm_head.bias.float()
        logits = F.linear(hidden[mask].to(lm_head.weight.device).float(), lm_head.weight.float(), bias)
        log_softmax = logits.log_softmax(dim=-1)
    log_probs = log_softmax.gather(-1, picked[:, None])[:, 0]
    fields = {}
    with torch.no_grad():
        detached = log_softmax.detach()  # finite for finite logits, so p * log p is too
        if "entropy" in outputs:
            fields["entropy"] = -(detached.exp() * detached).sum(-1)
        if "log_sum_sq_probs" in outputs:
            fields["log_sum_sq_probs"] = torch.logsumexp(2 * detached, dim=-1)
        if "mean_logits" in outputs:
            fields["mean_logits"] = logits.detach().mean(-1)
        if "is_top1" in outputs:
            fields["is_top1"] = detached.argmax(-1) == picked

    def spread(values):
        return values.new_zeros(mask.shape).masked_scatter(mask, values)

    log_probs = spread(log_probs)
    denominator = mask.sum().clamp(min=1) if num_items_in_batch is None else num_items_in_batch
    return FusedCausalLMOutput(
        loss=-log_probs.sum() / denominator,
        log_probs=log_probs,
        label_mask=mask,
        **{name: spread(value) for name, value in fields.items()},
    )


VARLEN_SDPA = "chimed_varlen_sdpa"


def varlen_sdpa(module, query, key, value, attention_mask, cu_seq_lens_q=None, dropout=0.0, scaling=None, **kwargs):
    """transformers' SDPA attention, except on one packed row with ``cu_seq_lens_q``: causal SDPA on each
    sequence's slice (the mask is not needed then), so the cost is the sum of the squared lengths, not the
    square of their sum."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    if cu_seq_lens_q is None or query.shape[0] != 1:
        return sdpa_attention_forward(
            module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs
        )
    gqa = query.shape[1] != key.shape[1]
    bounds = cu_seq_lens_q.tolist()
    outputs = [
        F.scaled_dot_product_attention(
            query[:, :, start:end],
            key[:, :, start:end],
            value[:, :, start:end],
            dropout_p=dropout,
            is_causal=True,
            scale=scaling,
            enable_gqa=gqa,
        )
        for start, end in zip(bounds[:-1], bounds[1:])
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous(), None


# What ``_unpadded`` passes as the attention mask under ``varlen_sdpa``: transformers takes a 4-D mask as
# already built (so it does not build the row's N x N block-diagonal one), and ``varlen_sdpa`` never reads it
# when the sequence boundaries come with it.
_NO_MASK = torch.ones(1, 1, 1, 1, dtype=torch.bool)


def _register_varlen_sdpa() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import ALL_MASK_ATTENTION_FUNCTIONS, sdpa_mask

    AttentionInterface.register(VARLEN_SDPA, varlen_sdpa)
    ALL_MASK_ATTENTION_FUNCTIONS.register(VARLEN_SDPA, sdpa_mask)
