"""Several LoRA adapters on one full model, each batch row through its own set of them, in one forward.

The app's panels on one full model (cpt, sft = cpt + sft adapter, dpo = cpt + sft + dpo adapters) are
one batch. Every targeted ``nn.Linear`` becomes a :class:`MultiLoraLinear` that keeps the low-rank
factors of all adapters attached to it side by side (``A`` stacked by rows, ``B`` by columns, each
adapter's scale folded into its ``B``). A batch computes ``x @ A.T`` once for every factor, zeroes the
factors a row does not use, and adds ``(..) @ B.T``: two small matrix products per layer whatever the
number of adapters or rows, where PEFT's mixed-adapter batches run each adapter's rows separately. A
row that applies several adapters (dpo = sft + dpo) gets their sum, exactly the model the later stage
was trained on, and each adapter's factors are held once however many contestants use them.

Adapters are read in PEFT's format (``adapter_config.json`` + ``adapter_model.safetensors``) with PEFT's
own loaders. Plain LoRA on linear layers is served; an adapter using anything else (DoRA, bias terms,
fully trained modules, ...) is refused with a one-line error naming the setting.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from core.errors import UserError

PREFIX = "base_model.model."  # how PEFT names the wrapped model's modules in a saved adapter
# adapter settings the fused forward does not implement: each must be off (falsy, or "none" for bias)
UNSUPPORTED = (
    "use_dora",
    "fan_in_fan_out",
    "modules_to_save",
    "lora_bias",
    "layer_replication",
    "trainable_token_indices",
    "target_parameters",
    "alpha_pattern",
    "use_qalora",
    "alora_invocation_tokens",
    "use_bdlora",
)


class MultiLoraLinear(nn.Module):
    """``base(x)`` plus, for each row, the sum of the LoRA updates of the adapters that row applies."""

    def __init__(self, base: nn.Linear) -> None:
        super().__init__()
        self.base = base
        weight = base.weight
        self.register_buffer("lora_a", weight.new_zeros(0, base.in_features))  # all adapters' A, stacked
        self.register_buffer("lora_b", weight.new_zeros(base.out_features, 0))  # their scaled B, side by side
        self.spans: dict[str, tuple[int, int]] = {}  # adapter name -> its factors' columns in lora_b
        self.active: tuple[torch.Tensor, torch.Tensor, torch.Tensor | None] | None = None
        self._routes: dict[tuple, tuple | None] = {}

    def add(self, name: str, a: torch.Tensor, b: torch.Tensor, scale: float) -> None:
        start = self.lora_a.shape[0]
        self.lora_a = torch.cat([self.lora_a, a.to(self.lora_a)])
        self.lora_b = torch.cat([self.lora_b, (b.float() * scale).to(self.lora_b)], dim=1)
        self.spans[name] = (start, start + a.shape[0])
        self._routes.clear()

    def route(self, rows: tuple[tuple[str, ...], ...]) -> None:
        """Apply, to batch row i, the adapters named in ``rows[i]`` (those that target this layer)."""
        if rows not in self._routes:
            if len(self._routes) > 64:
                self._routes.clear()
            self._routes[rows] = self._plan(rows)
        self.active = self._routes[rows]

    def _plan(self, rows):
        """Views of the factors from the first to the last column any row uses (never a copy), and a mask
        of the columns each row uses when they are not all of them."""
        used = [[self.spans[n] for n in names if n in self.spans] for names in rows]
        spans = [span for row in used for span in row]
        if not spans:
            return None
        first, last = min(start for start, _ in spans), max(end for _, end in spans)
        a, b = self.lora_a[first:last], self.lora_b[:, first:last]
        mask = torch.zeros(len(rows), 1, last - first, dtype=a.dtype, device=a.device)
        for row, row_spans in enumerate(used):
            for start, end in row_spans:
                mask[row, 0, start - first : end - first] = 1
        return a, b, None if bool(mask.all()) else mask

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.base(x)
        if self.active is None:
            return out
        a, b, mask = self.active
        low = F.linear(x, a)
        if mask is not None:
            low = low * mask
        return out + F.linear(low, b)


class MultiLora:
    """A full model with named LoRA adapters, routed per batch row by :meth:`route`."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.layers: dict[str, MultiLoraLinear] = {}
        self.names: list[str] = []

    def attach(self, name: str, path: str | Path) -> None:
        """Load the PEFT LoRA adapter saved in ``path`` under ``name``."""
        from peft import PeftConfig
        from peft.utils import load_peft_weights

        try:
            config = PeftConfig.from_pretrained(str(path))
        except (OSError, ValueError) as err:
            raise UserError(f"{path} is not a PEFT adapter: {str(err).splitlines()[0]}") from None
        if str(getattr(config, "peft_type", "")) not in ("LORA", "PeftType.LORA"):
            raise UserError(f"{path}: a {config.peft_type} adapter; the app serves LoRA adapters only")
        for setting in UNSUPPORTED:
            if getattr(config, setting, None):
                raise UserError(
                    f"{path}: adapter setting {setting} is not supported by the app's model pool "
                    "(plain LoRA on linear layers only); merge the adapter into a full model instead"
                )
        if getattr(config, "bias", "none") != "none":
            raise UserError(f"{path}: adapter setting bias={config.bias} is not supported by the app's model pool")
        weights = load_peft_weights(str(path), device="cpu")
        factors: dict[str, dict[str, torch.Tensor]] = {}
        for key, tensor in weights.items():
            module, _, part = key.removeprefix(PREFIX).rpartition(".lora_")
            if part not in ("A.weight", "B.weight") or not key.startswith(PREFIX):
                raise UserError(f"{path}: unexpected tensor {key} (the app's model pool serves plain LoRA only)")
            factors.setdefault(module, {})[part[0]] = tensor
        parts = []  # checked whole before any layer changes: a bad adapter leaves the model as it was
        for module, pair in factors.items():
            if set(pair) != {"A", "B"}:
                raise UserError(f"{path}: {module} has only lora_{''.join(pair)}")
            rank = pair["A"].shape[0]
            scale = config.lora_alpha / (math.sqrt(rank) if config.use_rslora else rank)
            self._check_target(module, pair, path)
            parts.append((module, pair, scale))
        for module, pair, scale in parts:
            self._layer(module).add(name, pair["A"], pair["B"], scale)
        self.names.append(name)

    def route(self, rows: list[tuple[str, ...]]) -> None:
        """Row i of the next batches applies the adapters ``rows[i]`` (an empty tuple: the model itself)."""
        key = tuple(tuple(names) for names in rows)
        for layer in self.layers.values():
            layer.route(key)

    def _check_target(self, module: str, pair: dict[str, torch.Tensor], path) -> None:
        try:
            target = self.model.get_submodule(module)
        except AttributeError:
            raise UserError(f"{path}: the adapter targets {module}, which the model does not have") from None
        if not isinstance(target, (nn.Linear, MultiLoraLinear)):
            raise UserError(
                f"{path}: the adapter targets {module}, a {type(target).__name__}; "
                "the app's model pool serves LoRA on linear layers only"
            )
        linear = target.base if isinstance(target, MultiLoraLinear) else target
        a, b = pair["A"].shape, pair["B"].shape
        if len(a) != 2 or len(b) != 2 or a[1] != linear.in_features or b != (linear.out_features, a[0]):
            raise UserError(
                f"{path}: the factors for {module} ({tuple(a)}, {tuple(b)}) do not fit its "
                f"{linear.in_features} -> {linear.out_features} weights: an adapter of another model?"
            )

    def _layer(self, module: str) -> MultiLoraLinear:
        if module not in self.layers:
            parent, _, child = module.rpartition(".")
            layer = self.layers[module] = MultiLoraLinear(self.model.get_submodule(module))
            setattr(self.model.get_submodule(parent) if parent else self.model, child, layer)
        return self.layers[module]
