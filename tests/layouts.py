"""Tiny random-weight checkpoints in the published layouts of the architectures researchers bring.

``write_tiny_checkpoint(layout, path)`` writes one into ``path`` as its publisher ships it: the native
transformers architectures (llama, mistral, qwen2, qwen3) with a byte-level BPE tokenizer, and Baichuan-7B /
Baichuan2-7B as LLaMA weights with q/k/v fused into ``W_pack``, a ``pytorch_model.bin``, the published-style
``config.json`` (``auto_map`` to remote code that is never written) and a sentencepiece ``tokenizer.model``.
Everything is trained or initialised here from the project's packaged Chinese text; nothing is downloaded.
A plain module, not a conftest: import it from the tests that need it.
"""

from __future__ import annotations

import atexit
import functools
import json
import shutil
import tempfile
from pathlib import Path

import torch

LAYOUTS = ("llama", "qwen2", "qwen3", "mistral", "baichuan", "baichuan2")

# Shapes: tiny but with every feature of the real ones (GQA where the architecture has it, 2 layers).
HIDDEN, INTERMEDIATE, LAYERS, HEADS, KV_HEADS, MAX_POSITIONS = 64, 96, 2, 4, 2, 512
BPE_VOCAB = 1000
# sentencepiece keeps >= 98% of the characters it sees as pieces of their own: ~2200 for this text
SENTENCEPIECE_VOCAB = 3000

QWEN_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{%- endif %}"
)

BAICHUAN_ARCHITECTURES = {
    "baichuan": (
        "BaiChuanForCausalLM",
        "configuration_baichuan.BaiChuanConfig",
        "modeling_baichuan.BaiChuanForCausalLM",
        "BaiChuanTokenizer",
    ),
    "baichuan2": (
        "BaichuanForCausalLM",
        "configuration_baichuan.BaichuanConfig",
        "modeling_baichuan.BaichuanForCausalLM",
        "BaichuanTokenizer",
    ),
}


@functools.cache
def _cache_dir() -> Path:
    """One folder per test process for the trained tokenizers (training them is the slow part)."""
    path = Path(tempfile.mkdtemp(prefix="chimed-layouts-"))
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


@functools.cache
def chinese_lines() -> tuple[str, ...]:
    """Training text: People's Daily paragraphs, product reviews (Latin text, digits, URLs among them) and a
    few clinical lines. CMeKG would add medical names but takes seconds to load."""
    from core.sources import people_daily_articles, product_reviews

    lines = [p for doc in people_daily_articles(300) for p in doc.text.split("\n") if p]
    lines += [doc.text for doc in product_reviews(600)]
    lines += ["患者 男 45岁，血压 140/90 mmHg，心率 88 次/分。", "CT: 右肺下叶见 1.2 cm 结节。"] * 20
    return tuple(lines)


def _bpe_tokenizer_dir(layout: str) -> Path:
    """Byte-level BPE from ``train_bpe_tokenizer``: base checkpoints have no chat template; qwen2 stands for
    an -Instruct checkpoint with ChatML; mistral has no pad token."""
    from transformers import AutoTokenizer

    from training.recipes.base import train_bpe_tokenizer

    out = _cache_dir() / f"bpe-{layout}"
    if out.is_dir():
        return out
    base = _cache_dir() / "bpe-base"
    if not base.is_dir():
        train_bpe_tokenizer(list(chinese_lines()), BPE_VOCAB).save_pretrained(base)
    tokenizer = AutoTokenizer.from_pretrained(base)
    tokenizer.chat_template = None
    if layout == "qwen2":
        tokenizer.add_special_tokens(
            {"extra_special_tokens": ["<|im_start|>", "<|im_end|>"], "eos_token": "<|im_end|>"}
        )
        tokenizer.chat_template = QWEN_CHAT_TEMPLATE
    if layout == "mistral":
        tokenizer.pad_token = None
    tokenizer.save_pretrained(out)
    return out


def _sentencepiece_model() -> Path:
    """A byte-fallback BPE sentencepiece model with Baichuan's settings and special ids (unk 0, bos 1,
    eos 2, no pad piece; identity normalisation, no dummy prefix, digits split)."""
    import sentencepiece as spm

    path = _cache_dir() / "baichuan-sp" / "tokenizer.model"
    if path.is_file():
        return path
    path.parent.mkdir()
    with path.open("wb") as f:
        spm.SentencePieceTrainer.train(
            sentence_iterator=iter(chinese_lines()),
            model_writer=f,
            vocab_size=SENTENCEPIECE_VOCAB,
            model_type="bpe",
            byte_fallback=True,
            character_coverage=0.98,
            unk_id=0,
            bos_id=1,
            eos_id=2,
            pad_id=-1,
            add_dummy_prefix=False,
            remove_extra_whitespaces=False,
            normalization_rule_name="identity",
            split_digits=True,
            allow_whitespace_only_pieces=True,
            minloglevel=2,
        )
    return path


def _native_config(layout: str, tokenizer):
    from transformers import LlamaConfig, MistralConfig, Qwen2Config, Qwen3Config

    kind = {"llama": LlamaConfig, "mistral": MistralConfig, "qwen2": Qwen2Config, "qwen3": Qwen3Config}[layout]
    extra = {"qwen2": {"tie_word_embeddings": True}, "qwen3": {"head_dim": HIDDEN // HEADS}}.get(layout, {})
    return kind(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=KV_HEADS,
        max_position_embeddings=MAX_POSITIONS,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        **extra,
    )


def _baichuan_llama_config(vocab_size: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=HIDDEN,
        intermediate_size=INTERMEDIATE,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        num_key_value_heads=HEADS,
        max_position_embeddings=MAX_POSITIONS,
        rms_norm_eps=1e-6,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        tie_word_embeddings=False,
    )


def _build_baichuan_twin(layout: str, seed: int):
    """The native LLaMA a Baichuan checkpoint is fused from; Baichuan2's head rows get norms far from 1."""
    import sentencepiece as spm
    from transformers import LlamaForCausalLM

    vocab_size = spm.SentencePieceProcessor(model_file=str(_sentencepiece_model())).vocab_size()
    torch.manual_seed(seed)
    model = LlamaForCausalLM(_baichuan_llama_config(vocab_size)).eval()
    if layout == "baichuan2":
        with torch.no_grad():
            scale = 0.5 + 3.0 * torch.rand(vocab_size, 1, generator=torch.Generator().manual_seed(seed))
            model.lm_head.weight.mul_(scale / model.lm_head.weight.norm(dim=1, keepdim=True))
    return model


def baichuan_state_dict(model) -> dict[str, torch.Tensor]:
    """A native LLaMA's weights under Baichuan's names: q, k, v stacked into ``self_attn.W_pack``."""
    state = {}
    for name, tensor in model.state_dict().items():
        if ".self_attn.k_proj." in name or ".self_attn.v_proj." in name:
            continue
        if ".self_attn.q_proj." in name:
            prefix = name.split(".self_attn.")[0] + ".self_attn."
            parts = [model.state_dict()[f"{prefix}{p}_proj.weight"] for p in "qkv"]
            state[f"{prefix}W_pack.weight"] = torch.cat(parts, dim=0).clone()
            continue
        state[name] = tensor.clone()
    return state


def _write_baichuan(layout: str, path: Path, seed: int) -> None:
    architecture, config_class, model_class, tokenizer_class = BAICHUAN_ARCHITECTURES[layout]
    model = _build_baichuan_twin(layout, seed)
    torch.save(baichuan_state_dict(model), path / "pytorch_model.bin")
    config = {
        "architectures": [architecture],
        "auto_map": {"AutoConfig": config_class, "AutoModelForCausalLM": model_class},
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 0,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": INTERMEDIATE,
        "max_position_embeddings": MAX_POSITIONS,
        "model_type": "baichuan",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "rms_norm_eps": 1e-6,
        "tie_word_embeddings": False,
        "torch_dtype": "float32",
        "transformers_version": "4.29.2",
        "use_cache": True,
        "vocab_size": model.config.vocab_size,
    }
    if layout == "baichuan2":
        config.update(model_max_length=MAX_POSITIONS, z_loss_weight=0)
    (path / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    (path / "generation_config.json").write_text(
        json.dumps({"bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0, "max_new_tokens": 64}, indent=2) + "\n"
    )

    shutil.copyfile(_sentencepiece_model(), path / "tokenizer.model")
    token = {"__type": "AddedToken", "lstrip": False, "normalized": True, "rstrip": False, "single_word": False}
    tokenizer_config = {
        "auto_map": {"AutoTokenizer": [f"tokenization_baichuan.{tokenizer_class}", None]},
        "add_bos_token": False,
        "add_eos_token": False,
        "bos_token": {**token, "content": "<s>"},
        "eos_token": {**token, "content": "</s>"},
        "unk_token": {**token, "content": "<unk>"},
        "clean_up_tokenization_spaces": False,
        "model_max_length": MAX_POSITIONS,
        "sp_model_kwargs": {},
        "tokenizer_class": tokenizer_class,
    }
    if layout == "baichuan2":
        tokenizer_config.update(pad_token={**token, "content": "<unk>"}, use_fast=False)
    (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    special = {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>"}
    if layout == "baichuan2":
        special["pad_token"] = "<unk>"
    (path / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _write_native(layout: str, path: Path, seed: int) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(_bpe_tokenizer_dir(layout))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(_native_config(layout, tokenizer))
    for key in ("bos_token_id", "eos_token_id", "pad_token_id"):
        setattr(model.generation_config, key, getattr(tokenizer, key))
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    # transformers loads a qwen2 checkpoint's tokenizer as Qwen2Tokenizer (its own pre-tokenizer regex over
    # our vocab and merges): save what it loads, so tokenizer.json and AutoTokenizer agree
    AutoTokenizer.from_pretrained(path).save_pretrained(path)


def write_tiny_checkpoint(layout: str, path: Path, seed: int = 0) -> Path:
    """Write a tiny random-weight checkpoint of ``layout`` (one of ``LAYOUTS``) into ``path``; returns it."""
    if layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: one of {', '.join(LAYOUTS)}")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if layout in BAICHUAN_ARCHITECTURES:
        _write_baichuan(layout, path, seed)
    else:
        _write_native(layout, path, seed)
    return path


def native_twin(layout: str, path: Path | None = None, seed: int = 0):
    """The native model a tiny checkpoint holds: for baichuan/baichuan2 the ``LlamaForCausalLM`` its weights
    were fused from (rebuilt from the seed, so it does not depend on any converter; Baichuan2's head still
    un-normalised, as written); for the native layouts the checkpoint at ``path`` loaded as is."""
    if layout in BAICHUAN_ARCHITECTURES:
        return _build_baichuan_twin(layout, seed)
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path).eval()


def sentencepiece_ids(path: Path, text: str) -> list[int]:
    """What the checkpoint's own ``tokenizer.model`` encodes ``text`` to (Baichuan adds no BOS/EOS)."""
    return _sentencepiece_processor(str(Path(path) / "tokenizer.model")).encode(text)


@functools.lru_cache(maxsize=8)
def _sentencepiece_processor(model_file: str):
    import sentencepiece as spm

    return spm.SentencePieceProcessor(model_file=model_file)
