"""Several LoRA adapters on one model, per batch row: the same logits as PEFT's merged models, and
adapters the fused forward does not implement refused before they change anything."""

from __future__ import annotations

import copy

import pytest
import torch
from peft import LoraConfig, PeftModel, get_peft_model
from transformers import LlamaConfig, LlamaForCausalLM

from app.serving.multi_lora import MultiLora
from core.errors import UserError


def _model(hidden: int = 32) -> LlamaForCausalLM:
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=64,
        hidden_size=hidden,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
    )
    return LlamaForCausalLM(config).eval()


def _adapter(model, path, **settings) -> str:
    """Save a LoRA adapter with random (not zero) factors for ``model`` in ``path``."""
    torch.manual_seed(len(str(path)))
    peft_model = get_peft_model(copy.deepcopy(model), LoraConfig(init_lora_weights=False, **settings))
    peft_model.save_pretrained(str(path))
    return str(path)


def _merged(model, *adapters):
    for adapter in adapters:
        model = PeftModel.from_pretrained(copy.deepcopy(model), adapter).merge_and_unload()
    return model.eval()


@pytest.fixture
def adapters(tmp_path):
    model = _model()
    first = _adapter(model, tmp_path / "sft", r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"])
    second = _adapter(
        _merged(model, first), tmp_path / "dpo", r=2, lora_alpha=4, use_rslora=True, target_modules=["q_proj", "o_proj"]
    )
    return model, first, second


def _logits(model, ids):
    with torch.inference_mode():
        return model(input_ids=ids).logits


def test_each_row_gets_its_own_adapters_as_merged_models_would(adapters):
    model, first, second = adapters
    ids = torch.tensor([[1, 5, 9, 13, 17, 21], [2, 6, 10, 14, 18, 22], [3, 7, 11, 15, 19, 23]])
    expected = [
        _logits(model, ids[0:1]),
        _logits(_merged(model, first), ids[1:2]),
        _logits(_merged(model, first, second), ids[2:3]),
    ]
    lora = MultiLora(copy.deepcopy(model))
    lora.attach("sft", first)
    lora.attach("other", _adapter(model, first + "-other", r=4, lora_alpha=8, target_modules=["q_proj"]))
    lora.attach("dpo", second)  # (another run's adapter sits between sft's and dpo's factors)
    lora.route([(), ("sft",), ("sft", "dpo")])  # base, sft = base + sft, dpo = base + sft + dpo in one batch
    mixed = _logits(lora.model, ids)
    for layer in lora.layers.values():  # routing uses views of the factors, never copies of them
        if layer.active is not None:
            assert layer.active[0].untyped_storage().data_ptr() == layer.lora_a.untyped_storage().data_ptr()
            assert layer.active[1].untyped_storage().data_ptr() == layer.lora_b.untyped_storage().data_ptr()
    for row in range(3):
        assert torch.allclose(mixed[row : row + 1], expected[row], atol=1e-5), row
    lora.route([("sft", "dpo")] * 3)  # one adapter set for the whole batch: no per-row mask
    assert torch.allclose(_logits(lora.model, ids)[2:3], expected[2], atol=1e-5)
    lora.route([()])
    assert torch.allclose(_logits(lora.model, ids[0:1]), expected[0], atol=1e-6)
    held = sum(t.numel() for name, t in lora.model.named_buffers() if "lora_" in name)
    parts = _factors(first) + _factors(second) + _factors(first + "-other")
    assert held == sum(t.numel() for t in parts)  # each adapter's factors once


def _factors(path):
    from peft.utils import load_peft_weights

    return list(load_peft_weights(path, device="cpu").values())


@pytest.mark.parametrize(
    "settings, message",
    [
        (dict(use_dora=True), "use_dora"),
        (dict(bias="lora_only"), "bias=lora_only"),
        (dict(modules_to_save=["lm_head"]), "modules_to_save"),
    ],
)
def test_an_adapter_the_pool_cannot_serve_is_refused_and_changes_nothing(adapters, tmp_path, settings, message):
    model, first, _ = adapters
    unsupported = _adapter(model, tmp_path / "odd", r=4, lora_alpha=8, target_modules=["q_proj"], **settings)
    lora = MultiLora(copy.deepcopy(model))
    lora.attach("sft", first)
    ids = torch.tensor([[1, 2, 3, 4]])
    lora.route([("sft",)])
    before = _logits(lora.model, ids)
    with pytest.raises(UserError, match=message):
        lora.attach("odd", unsupported)
    assert lora.names == ["sft"]
    lora.route([("sft",)])
    assert torch.equal(_logits(lora.model, ids), before)


def test_an_adapter_of_another_model_or_no_adapter_at_all_is_refused(adapters, tmp_path):
    model, first, _ = adapters
    other = _adapter(_model(hidden=48), tmp_path / "other", r=4, lora_alpha=8, target_modules=["q_proj"])
    lora = MultiLora(copy.deepcopy(model))
    with pytest.raises(UserError, match="do not fit"):
        lora.attach("other", other)
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="not a PEFT adapter"):
        lora.attach("empty", tmp_path / "empty")
    assert lora.names == [] and not lora.layers
