"""How the pool's workers hold full models on CPU (app/serving/shared_weights.py): mapped from one cache file, and
a model trained from another as that model plus an 8-bit difference."""

from __future__ import annotations

import os

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from app.serving.memory import weight_bytes_by_origin
from app.serving.shared_weights import DeltaEmbedding, DeltaLinear, DeltaMismatch, hold_as_delta, map_weights

IDS = torch.tensor([[3, 17, 42, 5, 99, 8]])


def _model(seed: int, vocab: int = 128) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=4,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(config).eval()


def _logits(model) -> torch.Tensor:
    with torch.inference_mode():
        return model(input_ids=IDS).logits[0]


def _trained_from(reference: LlamaForCausalLM, seed: int) -> LlamaForCausalLM:
    """A copy of ``reference`` whose every parameter moved (what continued pre-training does)."""
    model = _model(0)
    model.load_state_dict(reference.state_dict())
    torch.manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * p.std().clamp_min(0.02))
    return model


def test_a_model_held_as_difference_answers_like_itself_with_a_quarter_of_the_bytes():
    reference = _model(0)
    own = _trained_from(reference, 1)
    expected, reference_bytes = _logits(own), weight_bytes_by_origin(reference, {})[0]
    pointers = {p.untyped_storage().data_ptr() for p in reference.parameters()}  # as if mapped
    held = hold_as_delta(reference, own)
    assert isinstance(held.model.embed_tokens, DeltaEmbedding) and isinstance(held.lm_head, DeltaLinear)
    assert held.lm_head.delta_q is held.model.embed_tokens.delta_q  # the tied matrix's difference once
    error = (_logits(held) - expected).abs().max()
    assert error < 0.01 * (expected.max() - expected.min())
    assert torch.equal(_logits(held).argmax(-1), expected.argmax(-1))
    own_bytes, _ = weight_bytes_by_origin(held, dict.fromkeys(pointers, "reference"))
    assert own_bytes < 0.3 * reference_bytes  # int8 values, a scale per row, the norms whole


def test_models_of_different_shapes_are_not_held_as_a_difference():
    reference = _model(0)
    before = _logits(reference)
    with pytest.raises(DeltaMismatch):
        hold_as_delta(reference, _model(1, vocab=96))
    assert torch.equal(_logits(reference), before)  # left as it was


def test_weights_are_written_once_and_mapped_by_every_loader(tmp_path):
    source = tmp_path / "model"
    _model(3).save_pretrained(source)
    cache = tmp_path / "cache"
    first = LlamaForCausalLM.from_pretrained(source).eval()
    expected = _logits(first)
    file, pointers = map_weights(first, source, cache, torch.float32)
    written = os.stat(file).st_mtime_ns
    second = LlamaForCausalLM.from_pretrained(source).eval()
    assert map_weights(second, source, cache, torch.float32)[0] == file and os.stat(file).st_mtime_ns == written
    assert sorted(os.listdir(cache)) == sorted([file.name, f".{file.name}.lock"])  # no partial file left
    assert torch.equal(_logits(first), expected) and torch.equal(_logits(second), expected)
    assert all(p.untyped_storage().data_ptr() in pointers for p in first.parameters())
    own, files = weight_bytes_by_origin(first, dict.fromkeys(pointers, str(file)))
    assert own < 0.01 * files[str(file)] and files[str(file)] > 0.9 * os.path.getsize(file)  # (rotary buffer)
