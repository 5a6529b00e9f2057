"""How the pool's workers hold full models on CPU: mapped from one file, and a model trained from another
one (a run's cpt from its base) as that model plus an 8-bit difference.

- Mapped: a full model is written once, in the serving dtype, to ``$CHIMED_HOME/cache/serving/`` and each
  worker that needs its weights maps that file (copy-on-write, never written): the operating system keeps
  one copy of the pages however many worker processes read them.
- Delta: for a full model trained from another (``cpt`` from ``base``: the manifest's parent of a full
  stage), the worker maps the parent's weights and keeps, for each linear and embedding matrix, the
  difference to its own quantized to int8 per output row (absmax scaling), applied on the fly. Its own
  bytes are then about a quarter of a model's, and the exam scores of the demo's cpt served this way equal
  the checkpoint's (BENCHMARKS.md "Serving"). The pool holds models this way only with ``app.delta_bits: 8``;
  the default, 0, serves every model whole and exact.
  Parameters of any other kind (norms, biases) that differ are held whole.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

WEIGHT_SUFFIXES = (".safetensors", ".bin")
DELTA_BITS = (0, 8)  # 0: a full model trained from another is held whole


def _weight_files(path: str | Path) -> list[Path]:
    path = Path(path)
    return sorted(p for p in path.iterdir() if p.suffix in WEIGHT_SUFFIXES) if path.is_dir() else []


def weights_identity(path: str | Path, with_mtime: bool = False) -> tuple:
    """A key equal for directories holding the same weight files (hard links share inodes, as the runs
    resumed with ``--from`` do); ``with_mtime``: also changed when a file is rewritten in place."""
    files = _weight_files(path)
    if not files:
        return ("path", str(Path(path).resolve()))
    return tuple(
        (st.st_dev, st.st_ino, st.st_size) + ((st.st_mtime_ns,) if with_mtime else ()) for st in map(os.stat, files)
    )


def cache_file(cache_dir: Path, path: str | Path, dtype: torch.dtype) -> Path:
    """Where the weights of the model in ``path`` are kept for mapping: one file per weights and dtype,
    the same for every hard-linked copy of them."""
    key = hashlib.sha256(repr((weights_identity(path, with_mtime=True), str(dtype))).encode()).hexdigest()[:24]
    return Path(cache_dir) / f"{key}.pt"


def map_weights(model: nn.Module, path: str | Path, cache_dir: Path, dtype: torch.dtype) -> tuple[Path, set[int]]:
    """Replace ``model``'s weights (loaded from ``path``) by views of their cached file, written first if
    needed; returns the file and the data pointers of the mapped tensors."""
    file = cache_file(cache_dir, path, dtype)
    file.parent.mkdir(parents=True, exist_ok=True)
    # one writer at a time: two workers starting together must map the same file, not one each
    with open(file.with_name(f".{file.name}.lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not file.is_file():
            partial = file.with_name(f".{file.name}.{os.getpid()}.partial")
            torch.save(model.state_dict(), partial)
            os.replace(partial, file)  # whole or absent: a worker killed while writing leaves no half file
    state = torch.load(file, mmap=True, weights_only=True, map_location="cpu")
    model.load_state_dict(state, assign=True)
    return file, {t.untyped_storage().data_ptr() for t in state.values()}


# --- a full model as another one plus a quantized difference ---------------------------------------


def quantize_rows(delta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``delta`` as int8 values and a scale per row (its largest magnitude / 127)."""
    scale = delta.abs().amax(dim=1, keepdim=True).clamp_min(torch.finfo(delta.dtype).tiny) / 127
    return (delta / scale).round_().clamp_(-127, 127).to(torch.int8), scale


class DeltaLinear(nn.Linear):
    """A linear layer computing with ``reference + delta_q * delta_scale`` (reference: another model's weight)."""

    def __init__(
        self, reference: nn.Parameter, q: torch.Tensor, scale: torch.Tensor, bias: nn.Parameter | None
    ) -> None:
        nn.Module.__init__(self)
        self.out_features, self.in_features = reference.shape
        self.weight = reference
        self.bias = bias
        self.register_buffer("delta_q", q)
        self.register_buffer("delta_scale", scale)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, torch.addcmul(self.weight, self.delta_q, self.delta_scale), self.bias)


class DeltaEmbedding(nn.Embedding):
    """An embedding whose rows are the reference's plus their int8 differences."""

    def __init__(self, source: nn.Embedding, q: torch.Tensor, scale: torch.Tensor) -> None:
        nn.Module.__init__(self)
        for name in (
            "num_embeddings",
            "embedding_dim",
            "padding_idx",
            "max_norm",
            "norm_type",
            "scale_grad_by_freq",
            "sparse",
        ):
            setattr(self, name, getattr(source, name))
        self.weight = source.weight
        self.register_buffer("delta_q", q)
        self.register_buffer("delta_scale", scale)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight) + self.delta_q[ids] * self.delta_scale[ids]


class DeltaMismatch(ValueError):
    """The two models do not have the same parameters: the model is held whole instead."""


def hold_as_delta(reference: nn.Module, own: nn.Module) -> nn.Module:
    """Turn ``reference`` (mapped weights) into ``own``'s model: every ``nn.Linear`` and ``nn.Embedding``
    gets ``own``'s weight as reference + int8 difference (tied matrices quantized once), every other
    parameter or buffer that differs becomes ``own``'s. Raises :class:`DeltaMismatch` before changing
    anything when the parameters' names or shapes differ."""
    mine, theirs = reference.state_dict(), own.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        raise DeltaMismatch("the two models' parameters differ in names or shapes")
    own_params = dict(own.named_parameters(remove_duplicate=False))
    covered: set[str] = set()
    deltas: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}  # reference storage -> (q, scale): ties once
    for name, module in list(reference.named_modules()):
        if type(module) not in (nn.Linear, nn.Embedding):
            continue
        weight_name = f"{name}.weight" if name else "weight"
        key = module.weight.untyped_storage().data_ptr()
        if key not in deltas:
            deltas[key] = quantize_rows(
                own_params[weight_name].detach().to(module.weight.dtype) - module.weight.detach()
            )
        q, scale = deltas[key]
        if isinstance(module, nn.Linear):
            bias = (
                None
                if module.bias is None
                else nn.Parameter(own_params[f"{name}.bias"].detach().clone(), requires_grad=False)
            )
            replacement = DeltaLinear(module.weight, q, scale, bias)
            covered.add(f"{name}.bias")
        else:
            replacement = DeltaEmbedding(module, q, scale)
        parent, _, child = name.rpartition(".")
        setattr(reference.get_submodule(parent) if parent else reference, child, replacement)
        covered.add(weight_name)
    for name, tensor in list(reference.named_parameters(remove_duplicate=False)) + list(reference.named_buffers()):
        if name in covered or name not in theirs or torch.equal(tensor, theirs[name]):
            continue
        module_name, _, attr = name.rpartition(".")
        module = reference.get_submodule(module_name) if module_name else reference
        value = theirs[name].detach().clone()
        if isinstance(tensor, nn.Parameter):
            setattr(module, attr, nn.Parameter(value, requires_grad=False))
        else:
            module.register_buffer(attr, value)
    return reference
