"""LoRA on the linear layers a model really has: targets resolved from the model, checked, recorded.

``lora.target_modules`` is ``["all-linear"]`` by default: every linear layer of every decoder block
(attention and MLP, fused or not: ``W_pack``, ``qkv_proj``, ``gate_up_proj`` ...), never the output head.
A list of names is checked against the model before anything trains: each name must be a linear layer of
every decoder block (PEFT's suffix match), so a name that matches nothing (``q_proj`` on a fused-attention
model) or only some blocks is a one-line error listing the names the blocks have. The resolved names and
the trainable/total parameter counts go into ``stage.json`` and the model card, and the stage's first log
line prints them.
"""

from __future__ import annotations

from torch import nn

from core.errors import UserError

ALL_LINEAR = "all-linear"


def decoder_blocks(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(full name, block)`` of the repeated blocks of a causal LM: the longest ``nn.ModuleList`` whose
    items share one class."""
    best: list[tuple[str, nn.Module]] = []
    for prefix, module in model.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > len(best) and len({type(m) for m in module}) == 1:
            best = [(f"{prefix}.{i}" if prefix else str(i), m) for i, m in enumerate(module)]
    if not best:
        raise UserError(f"{type(model).__name__} has no repeated decoder blocks to put LoRA adapters on")
    return best


def _is_linear(module: nn.Module) -> bool:
    from transformers.pytorch_utils import Conv1D  # GPT-2's linear layers

    return isinstance(module, (nn.Linear, Conv1D))


def block_linear_names(block: nn.Module) -> list[str]:
    """The linear layers of one decoder block, by their name inside it (``self_attn.q_proj``, ...)."""
    return [name for name, module in block.named_modules() if name and _is_linear(module)]


def _matches(full_name: str, target: str) -> bool:
    return full_name == target or full_name.endswith("." + target)  # PEFT's rule for a list of names


def resolve_lora_targets(model: nn.Module, targets: list[str], setting: str) -> list[str]:
    """The block-relative names of the linear layers ``targets`` adapts, checked against every block.

    ``setting`` names the config key (``sft.lora.target_modules``) in the one-line error.
    """
    blocks = [(prefix, block_linear_names(block)) for prefix, block in decoder_blocks(model)]
    have = sorted({n for _, names in blocks for n in names})
    if list(targets) == [ALL_LINEAR]:
        missing = [i for i, (_, names) in enumerate(blocks) if not names]
        if missing:
            raise UserError(f"{setting}=all-linear: decoder block {missing[0]} has no linear layer")
        return have
    if ALL_LINEAR in targets:
        raise UserError(f"{setting}: 'all-linear' stands alone; give it or a list of module names, not both")
    chosen: set[str] = set()
    for target in targets:
        hits = [[n for n in names if _matches(f"{prefix}.{n}", target)] for prefix, names in blocks]
        without = [i for i, h in enumerate(hits) if not h]
        if len(without) == len(blocks):
            raise UserError(
                f"{setting}: {target!r} matches no linear layer of {type(model).__name__}; "
                f"its decoder blocks have: {', '.join(have)} (or use all-linear)"
            )
        if without:
            raise UserError(
                f"{setting}: {target!r} misses decoder blocks {_ranges(without)} of "
                f"{len(blocks)}; their linear layers: {', '.join(have)} (name them without a "
                "block number, or use all-linear)"
            )
        chosen.update(n for h in hits for n in h)
    return sorted(chosen)


def _ranges(indices: list[int]) -> str:
    return ", ".join(map(str, indices[:8])) + (" ..." if len(indices) > 8 else "")


def peft_lora_config(lora, model: nn.Module, setting: str):
    """peft.LoraConfig for ``model`` from a config section's ``lora`` (r, alpha, dropout, targets),
    with the targets resolved and checked (:func:`resolve_lora_targets`)."""
    from peft import LoraConfig, TaskType

    targets = resolve_lora_targets(model, list(lora.target_modules), setting)
    return LoraConfig(
        task_type=TaskType.CAUSAL_LM, r=lora.r, lora_alpha=lora.alpha, lora_dropout=lora.dropout, target_modules=targets
    )


def lora_record(peft_model, lora_config) -> dict:
    """What ``stage.json`` and the model card say of an adapter: modules adapted and parameter counts."""
    trainable, total = peft_model.get_nb_trainable_parameters()
    adapted = sum(
        1
        for name, module in peft_model.named_modules()
        if hasattr(module, "lora_A") and _is_linear(getattr(module, "base_layer", module))
    )
    return {
        "target_modules": sorted(lora_config.target_modules),
        "adapted_layers": adapted,
        "r": lora_config.r,
        "alpha": lora_config.lora_alpha,
        "dropout": lora_config.lora_dropout,
        "trainable_params": int(trainable),
        "total_params": int(total),
    }


def describe_lora(stage: str, record: dict) -> str:
    """The stage's first log line about its adapter."""
    share = 100 * record["trainable_params"] / max(record["total_params"], 1)
    return (
        f"{stage}: LoRA r={record['r']} alpha={record['alpha']} on {record['adapted_layers']} linear layers "
        f"({', '.join(record['target_modules'])}); trainable {record['trainable_params']:,} of "
        f"{record['total_params']:,} parameters ({share:.2f}%)"
    )
