"""Import checkpoints published in a legacy layout as the native transformers architecture they really are.

Baichuan-7B and Baichuan2-7B ship remote modelling code that is broken under transformers 5 (NaN rotary
buffers after meta init, tuple KV caches, no GenerationMixin). Their weights are LLaMA's with q, k and v
fused into one ``W_pack`` (Baichuan2 adds a NormHead: ``lm_head`` rows are L2-normalised in the forward
pass), so ``convert_checkpoint`` rewrites them as a plain ``LlamaForCausalLM`` that runs without remote code:

    OUT/config.json, generation_config.json   LlamaConfig from the source keys; bos/eos/pad from the source
    OUT/model*.safetensors (+ index)           the weights in the source dtype, q/k/v split, the head normalised
    OUT/tokenizer.json, tokenizer_config.json  the sentencepiece tokenizer as a native fast one (same ids)
    OUT/conversion.json                        provenance: source path, layout and sha256

The ALiBi models (Baichuan-13B, Baichuan2-13B) have no native architecture and are refused.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import torch

from core.errors import UserError
from core.files import current_umask, directory_written_atomically

LAYOUTS = ("native", "baichuan", "baichuan2", "baichuan-alibi", "remote")
CONVERTIBLE = {"BaiChuanForCausalLM": "baichuan", "BaichuanForCausalLM": "baichuan2"}
CONVERSION_INFO = "conversion.json"
TARGET_ARCHITECTURE = "LlamaForCausalLM"
# An output shard is held in memory while it is written: this bounds the converter's memory, not the model's.
SHARD_BYTES = 2 * 1024**3
ROPE_THETA = 10000.0  # Baichuan-7B and Baichuan2-7B: LLaMA's rotary embedding, unscaled
# Buffers some checkpoints carry that the native model recomputes
SKIPPED = re.compile(r"\.rotary_emb\.inv_freq$")


def detect_layout(path: str | Path) -> str:
    """The layout of the checkpoint in ``path``, from its ``config.json`` (and any shipped ``modeling_*.py``).

    ``native``: a model type transformers knows; ``baichuan`` (Baichuan-7B) and ``baichuan2`` (Baichuan2-7B):
    rotary Baichuan, convertible; ``baichuan-alibi`` (the 13B models): ALiBi, no native architecture;
    ``remote``: anything else that needs its own code.
    """
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    path = Path(path)
    config = _read_config(path)
    model_type = config.get("model_type", "")
    architectures = config.get("architectures") or []
    if model_type == "baichuan" or any(a in CONVERTIBLE for a in architectures):
        if "max_position_embeddings" not in config or _mentions_alibi(path):
            return "baichuan-alibi"
        for architecture in architectures:
            if architecture in CONVERTIBLE:
                return CONVERTIBLE[architecture]
        return "remote"
    if model_type in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES:
        return "native"  # an auto_map beside a known model type is not needed: transformers has the class
    return "remote"


def convert_checkpoint(src: str | Path, out: str | Path, force: bool = False) -> dict:
    """Write the Baichuan-7B / Baichuan2-7B checkpoint in ``src`` as a native LLaMA checkpoint in ``out``.

    ``out`` is written beside itself and renamed into place when complete; an existing ``out`` is refused
    unless ``force``. Returns the provenance record also written to ``out/conversion.json``.
    """
    src, out = Path(src), Path(out)
    layout = detect_layout(src)
    if layout == "native":
        raise UserError(
            f"{src} is already a native transformers checkpoint ({_read_config(src)['model_type']}): "
            "use it as it is (model.path), there is nothing to import"
        )
    if layout == "baichuan-alibi":
        raise UserError(
            f"{src} is an ALiBi Baichuan (13B) checkpoint, which cannot become a native architecture: "
            "run it with model.trust_remote_code=true (it is used only if it passes the pre-flight)"
        )
    if layout == "remote":
        raise UserError(
            f"{src} has an unknown layout that needs its own code and cannot become a native "
            "architecture: import supports Baichuan-7B and Baichuan2-7B"
        )
    _check_out(src, out, force)
    config = _read_config(src)
    llama = llama_config(config)
    files = weight_files(src)
    norm_head = layout == "baichuan2"

    with directory_written_atomically(out, force) as partial:
        llama.dtype = _convert_weights(files, llama, partial, norm_head=norm_head)
        llama.save_pretrained(partial)
        _generation_config(src, config).save_pretrained(partial)
        convert_tokenizer(src, partial)
        record = {
            "source_path": str(src.resolve()),
            "source_layout": layout,
            "source_sha256": weights_sha256(files),
            "target_architecture": TARGET_ARCHITECTURE,
            "converted": datetime.now(UTC).isoformat(timespec="seconds"),
            "norm_head": norm_head,
        }
        (partial / CONVERSION_INFO).write_text(
            json.dumps(record, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
    return record


# --- config --------------------------------------------------------------------------------------------


def _read_config(path: Path) -> dict:
    if not path.is_dir():
        raise UserError(f"model directory {path} does not exist: give the path of a Hugging Face checkpoint")
    file = path / "config.json"
    if not file.is_file():
        raise UserError(f"{path} has no config.json: give the directory of a Hugging Face checkpoint")
    try:
        return json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{file} is not valid JSON ({err}): restore it from the published checkpoint") from None


def _mentions_alibi(path: Path) -> bool:
    return any("alibi" in f.read_text(encoding="utf-8", errors="replace").lower() for f in path.glob("modeling_*.py"))


def llama_config(config: dict, dtype: torch.dtype | None = None):
    """The ``LlamaConfig`` of a rotary Baichuan ``config.json`` (no GQA: as many kv heads as heads)."""
    from transformers import LlamaConfig

    def key(name):
        if not isinstance(config.get(name), int) or config[name] <= 0:
            raise UserError(
                f"config.json has no valid {name!r} (a positive integer): restore it from the published checkpoint"
            )
        return config[name]

    if key("hidden_size") % key("num_attention_heads"):
        raise UserError(
            f"config.json: hidden_size {config['hidden_size']} is not a multiple of num_attention_heads "
            f"{config['num_attention_heads']}: restore it from the published checkpoint"
        )
    return LlamaConfig(
        vocab_size=key("vocab_size"),
        hidden_size=key("hidden_size"),
        intermediate_size=key("intermediate_size"),
        num_hidden_layers=key("num_hidden_layers"),
        num_attention_heads=key("num_attention_heads"),
        num_key_value_heads=key("num_attention_heads"),
        max_position_embeddings=key("max_position_embeddings"),
        rms_norm_eps=config.get("rms_norm_eps", 1e-6),
        hidden_act=config.get("hidden_act", "silu"),
        initializer_range=config.get("initializer_range", 0.02),
        rope_parameters={"rope_type": "default", "rope_theta": ROPE_THETA},
        bos_token_id=config.get("bos_token_id"),
        eos_token_id=config.get("eos_token_id"),
        pad_token_id=config.get("pad_token_id"),
        tie_word_embeddings=False,
        use_cache=True,
        architectures=[TARGET_ARCHITECTURE],
        dtype=dtype,
    )


def _generation_config(src: Path, config: dict):
    """bos/eos/pad of the source: its generation_config.json where it has one, else its config.json."""
    from transformers import GenerationConfig

    ids = {k: config.get(k) for k in ("bos_token_id", "eos_token_id", "pad_token_id")}
    file = src / "generation_config.json"
    if file.is_file():
        shipped = json.loads(file.read_text(encoding="utf-8"))
        ids.update({k: shipped[k] for k in ids if shipped.get(k) is not None})
    return GenerationConfig(**ids)


# --- weights -------------------------------------------------------------------------------------------


def weight_files(src: Path) -> list[Path]:
    """The weight files of ``src``, in sorted name order: safetensors (single or indexed) before
    ``pytorch_model.bin`` (single or indexed)."""
    for index_name, single, pattern in (
        ("model.safetensors.index.json", "model.safetensors", "*.safetensors"),
        ("pytorch_model.bin.index.json", "pytorch_model.bin", "pytorch_model*.bin"),
    ):
        index = src / index_name
        if index.is_file():
            names = sorted(set(json.loads(index.read_text(encoding="utf-8"))["weight_map"].values()))
            missing = [n for n in names if not (src / n).is_file()]
            if missing:
                raise UserError(f"{index} lists {missing[0]}, which is missing: download the whole checkpoint")
            return [src / n for n in names]
        if (src / single).is_file():
            return [src / single]
        files = sorted(src.glob(pattern))
        if files:
            return files
    raise UserError(
        f"{src} has no weights (pytorch_model.bin, pytorch_model-*.bin or *.safetensors): download the whole checkpoint"
    )


def weights_sha256(files: list[Path]) -> str:
    """sha256 over the weight files' bytes, in the given (sorted) order, streamed."""
    from tqdm.auto import tqdm

    digest = hashlib.sha256()
    with tqdm(total=sum(f.stat().st_size for f in files), unit="B", unit_scale=True, desc="sha256") as bar:
        for file in files:
            with file.open("rb") as f:
                while chunk := f.read(16 * 1024**2):
                    digest.update(chunk)
                    bar.update(len(chunk))
    return digest.hexdigest()


def _read_tensors(file: Path) -> Iterator[tuple[str, torch.Tensor]]:
    """The tensors of one weight file, memory-mapped (nothing is read until it is used)."""
    if file.suffix == ".safetensors":
        from safetensors import safe_open

        with safe_open(file, framework="pt") as f:
            for name in f.keys():
                yield name, f.get_tensor(name)
        return
    try:
        state = torch.load(file, map_location="cpu", mmap=True, weights_only=True)
    except Exception as err:  # a truncated download, a legacy (non-zip) pickle, or not a state dict at all
        raise UserError(
            f"cannot read {file} ({str(err).splitlines()[0][:200]}): download it again from the published checkpoint"
        ) from None
    if not isinstance(state, dict):
        raise UserError(f"{file} holds no state dict: download it again from the published checkpoint")
    yield from state.items()


def _expected_shapes(llama) -> dict[str, tuple[int, ...]]:
    """Every tensor of the Baichuan layout of the model ``llama`` (its ``LlamaConfig``), with its shape."""
    h, inter, vocab = llama.hidden_size, llama.intermediate_size, llama.vocab_size
    shapes = {"model.embed_tokens.weight": (vocab, h), "model.norm.weight": (h,), "lm_head.weight": (vocab, h)}
    for i in range(llama.num_hidden_layers):
        p = f"model.layers.{i}."
        shapes.update(
            {
                p + "self_attn.W_pack.weight": (3 * h, h),
                p + "self_attn.o_proj.weight": (h, h),
                p + "mlp.gate_proj.weight": (inter, h),
                p + "mlp.up_proj.weight": (inter, h),
                p + "mlp.down_proj.weight": (h, inter),
                p + "input_layernorm.weight": (h,),
                p + "post_attention_layernorm.weight": (h,),
            }
        )
    return shapes


def _native_tensors(name: str, tensor: torch.Tensor, norm_head: bool) -> Iterator[tuple[str, torch.Tensor]]:
    """One Baichuan tensor as the LLaMA tensors it holds (cloned: out of the memory map, no shared storage)."""
    if name.endswith(".self_attn.W_pack.weight"):
        prefix = name.removesuffix("W_pack.weight")
        for part, chunk in zip("qkv", tensor.chunk(3, dim=0)):
            yield f"{prefix}{part}_proj.weight", chunk.clone()
    elif name == "lm_head.weight" and norm_head:
        yield name, normalise_rows(tensor)
    else:
        yield name, tensor.clone()


def normalise_rows(weight: torch.Tensor, block_rows: int = 4096) -> torch.Tensor:
    """Baichuan2's NormHead: every row divided by its L2 norm (as its forward pass does each time), done
    once here, in float32 and rounded once to the source dtype, a block of rows at a time so that a
    125k-row head needs no float32 copy of itself."""
    out = torch.empty_like(weight, memory_format=torch.contiguous_format)
    for start in range(0, weight.shape[0], block_rows):
        rows = weight[start : start + block_rows].float()
        out[start : start + block_rows] = torch.nn.functional.normalize(rows, dim=1).to(weight.dtype)
    return out


def _convert_weights(files: list[Path], llama, out: Path, norm_head: bool) -> torch.dtype:
    """Stream the source tensors into safetensors shards of at most ``SHARD_BYTES`` in ``out``; returns
    the source dtype."""
    from safetensors.torch import save_file
    from tqdm.auto import tqdm

    expected = _expected_shapes(llama)
    seen: set[str] = set()
    dtypes: set[torch.dtype] = set()
    shards: list[dict[str, str]] = []  # per written shard: tensor name -> temporary file name
    pending: dict[str, torch.Tensor] = {}
    pending_bytes = total_bytes = 0

    def flush():
        nonlocal pending, pending_bytes
        if pending:
            name = f"shard-{len(shards):05d}.safetensors"
            save_file(pending, out / name, metadata={"format": "pt"})
            (out / name).chmod(0o666 & ~current_umask())  # safetensors creates it private
            shards.append(dict.fromkeys(pending, name))
        pending, pending_bytes = {}, 0

    with tqdm(total=len(expected), unit="tensor", desc="converting") as bar:
        for file in files:
            for name, tensor in _read_tensors(file):
                if SKIPPED.search(name):
                    continue
                if name not in expected:
                    raise UserError(
                        f"{file} holds tensor {name}, which the Baichuan layout does not have: "
                        "this is not a Baichuan-7B/Baichuan2-7B checkpoint"
                    )
                if tuple(tensor.shape) != expected[name]:
                    raise UserError(
                        f"{file}: tensor {name} has shape {list(tensor.shape)}, expected "
                        f"{list(expected[name])} from config.json: the weights and config.json do "
                        "not belong together"
                    )
                seen.add(name)
                dtypes.add(tensor.dtype)
                for native_name, native in _native_tensors(name, tensor, norm_head):
                    pending[native_name] = native
                    size = native.numel() * native.element_size()
                    pending_bytes += size
                    total_bytes += size
                if pending_bytes >= SHARD_BYTES:
                    flush()
                bar.update()
        flush()
    missing = sorted(set(expected) - seen)
    if missing:
        raise UserError(
            f"{files[0].parent} has no tensor {missing[0]} ({len(missing)} missing): download the whole checkpoint"
        )
    if len(dtypes) != 1:
        raise UserError(f"{files[0].parent} mixes dtypes {sorted(map(str, dtypes))}: expected one")
    _name_shards(shards, out, total_bytes)
    return dtypes.pop()


def _name_shards(shards: list[dict[str, str]], out: Path, total_bytes: int) -> None:
    """Give the shards transformers' names (``model.safetensors``, or ``model-0000i-of-0000n`` + index)."""
    if len(shards) == 1:
        os.rename(out / next(iter(shards[0].values())), out / "model.safetensors")
        return
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.rename(out / next(iter(shard.values())), out / final)
        weight_map.update(dict.fromkeys(shard, final))
    index = {"metadata": {"total_size": total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
    (out / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")


# --- tokenizer -----------------------------------------------------------------------------------------


def convert_tokenizer(src: Path, out: Path) -> str:
    """Write ``src``'s tokenizer to ``out`` as a native one that ``AutoTokenizer`` loads without remote code.

    A sentencepiece ``tokenizer.model`` becomes a fast tokenizer with the same ids (returns
    ``"sentencepiece"``); a ``tokenizer.json`` is copied as it is, less any ``auto_map`` (``"copied"``).
    """
    if (src / "tokenizer.model").is_file():
        sentencepiece_tokenizer(src).save_pretrained(out)
        return "sentencepiece"
    if (src / "tokenizer.json").is_file():
        for name in ("tokenizer.json", "special_tokens_map.json", "chat_template.jinja"):
            if (src / name).is_file():
                shutil.copyfile(src / name, out / name)
        settings = _tokenizer_settings(src)
        if "auto_map" in settings:  # the remote class would be asked for even though tokenizer.json suffices
            settings.pop("auto_map")
            settings["tokenizer_class"] = "TokenizersBackend"
        (out / "tokenizer_config.json").write_text(
            json.dumps(settings, ensure_ascii=False, indent=2) + "\n", encoding="utf-8"
        )
        return "copied"
    raise UserError(f"{src} has no tokenizer (tokenizer.model or tokenizer.json): download the whole checkpoint")


def _tokenizer_settings(src: Path) -> dict:
    file = src / "tokenizer_config.json"
    return json.loads(file.read_text(encoding="utf-8")) if file.is_file() else {}


def _token_text(value) -> str | None:
    """A special token as tokenizer_config.json writes it: a string or an AddedToken dict."""
    return value.get("content") if isinstance(value, dict) else value


def sentencepiece_tokenizer(src: Path):
    """``src/tokenizer.model`` as a fast tokenizer giving the ids ``SentencePieceProcessor.encode`` gives
    (byte fallback, the model's whitespace and normalisation rules), with the special tokens and BOS/EOS
    policy of ``src/tokenizer_config.json``. BPE models (Baichuan's) match exactly; unigram models up to
    ties between equally scored segmentations. Like the remote tokenizers, special-token text (``</s>``)
    in the input becomes the special token, where raw sentencepiece would spell it out."""
    from sentencepiece import sentencepiece_model_pb2
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, normalizers
    from tokenizers.models import BPE, Unigram
    from transformers import PreTrainedTokenizerFast
    from transformers.tokenization_utils_base import generate_merges

    proto = sentencepiece_model_pb2.ModelProto()
    try:
        proto.ParseFromString((src / "tokenizer.model").read_bytes())
    except Exception:
        raise UserError(
            f"{src / 'tokenizer.model'} is not a sentencepiece model: download it again from the published checkpoint"
        ) from None
    trainer, spec = proto.trainer_spec, proto.normalizer_spec
    pieces = [(p.piece, p.score) for p in proto.pieces]
    if trainer.model_type == trainer.BPE:
        # sentencepiece merges the pair whose result scores highest, and a BPE model's scores fall with the
        # piece id: so the merges in piece-id order
        vocab = {piece: i for i, (piece, _) in enumerate(pieces)}
        # control, unused and byte pieces never come out of merging text
        unmerged = {p.piece for p in proto.pieces if p.type in (p.CONTROL, p.UNUSED, p.BYTE)}
        model = BPE(
            vocab=vocab,
            merges=generate_merges(vocab, skip_tokens=unmerged),
            unk_token=trainer.unk_piece,
            fuse_unk=True,
            byte_fallback=trainer.byte_fallback,
        )
    elif trainer.model_type == trainer.UNIGRAM:
        warnings.warn(
            f"{src / 'tokenizer.model'} is a unigram model: the converted tokenizer may split a run "
            "of repeated characters differently where two segmentations score the same",
            stacklevel=2,
        )
        model = Unigram(pieces, unk_id=trainer.unk_id, byte_fallback=trainer.byte_fallback)
    else:
        raise UserError(
            f"{src / 'tokenizer.model'} is a sentencepiece {trainer.ModelType.Name(trainer.model_type)} "
            "model: only BPE and unigram models can be imported"
        )
    tokenizer = Tokenizer(model)

    steps = []
    if spec.precompiled_charsmap:
        steps.append(normalizers.Precompiled(spec.precompiled_charsmap))
    if spec.remove_extra_whitespaces:
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if spec.add_dummy_prefix:
        steps.append(normalizers.Prepend("▁"))
    steps.append(normalizers.Replace(" ", "▁"))
    tokenizer.normalizer = normalizers.Sequence(steps)
    decode = [decoders.Replace("▁", " ")]
    if trainer.byte_fallback:
        decode += [decoders.ByteFallback(), decoders.Fuse()]
    if spec.add_dummy_prefix:
        decode.append(decoders.Strip(content=" ", left=1))
    tokenizer.decoder = decoders.Sequence(decode)
    # sentencepiece always cuts user-defined pieces out of the text whole
    user_defined = [p.piece for p in proto.pieces if p.type == p.USER_DEFINED]
    if user_defined:
        tokenizer.add_tokens([AddedToken(p, normalized=False, special=False) for p in user_defined])

    settings = _tokenizer_settings(src)
    piece_of = {
        "unk_token": trainer.unk_piece if trainer.unk_id >= 0 else None,
        "bos_token": trainer.bos_piece if trainer.bos_id >= 0 else None,
        "eos_token": trainer.eos_piece if trainer.eos_id >= 0 else None,
        "pad_token": trainer.pad_piece if trainer.pad_id >= 0 else None,
    }
    special = {key: _token_text(settings[key]) if key in settings else piece for key, piece in piece_of.items()}
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        **{k: v for k, v in special.items() if v is not None},
        add_bos_token=bool(settings.get("add_bos_token", False)),
        add_eos_token=bool(settings.get("add_eos_token", False)),
        clean_up_tokenization_spaces=bool(settings.get("clean_up_tokenization_spaces", False)),
        model_max_length=settings.get("model_max_length", int(1e30)),
        **({"chat_template": settings["chat_template"]} if settings.get("chat_template") else {}),
    )


# --- output directory ----------------------------------------------------------------------------------


def _check_out(src: Path, out: Path, force: bool) -> None:
    """Refuse an existing ``out`` without ``force``, and any ``out`` that is, holds or lies inside ``src``."""
    if (out.exists() or out.is_symlink()) and not force:
        raise UserError(f"--out {out} already exists: choose another directory, or pass --force to replace it")
    target, source = out.resolve(), src.resolve()
    if target == source or source.is_relative_to(target) or target.is_relative_to(source):
        raise UserError(f"--out {out} overlaps the source checkpoint {src}: write the import elsewhere")
