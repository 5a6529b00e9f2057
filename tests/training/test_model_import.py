"""Importing Baichuan-7B / Baichuan2-7B checkpoints as native LLaMA checkpoints (``./launch.sh import-model``)."""

from __future__ import annotations

import hashlib
import json
import shutil

import pytest
import torch
from safetensors.torch import save_file

from chimed import main
from core.errors import UserError
from tests.layouts import LAYOUTS, chinese_lines, native_twin, sentencepiece_ids, write_tiny_checkpoint
from training import model_import
from training.model_import import convert_checkpoint, detect_layout

# Text a Chinese medical model sees: news, reviews (Latin, digits, URLs), spaces and tabs, rare characters
# that only byte fallback can spell
TEXTS = [*chinese_lines()[::7], "患者  男，45岁\t血压 140/90 mmHg\n主诉：咳嗽 3 天。", "𠮷野家 😀 ㈱", " 前导空格 ", ""]


@pytest.fixture(scope="module")
def imported(tmp_path_factory) -> dict:
    """layout -> (source dir, converted dir) for baichuan and baichuan2, converted once for the module."""
    root = tmp_path_factory.mktemp("import")
    done = {}
    for layout in ("baichuan", "baichuan2"):
        src = write_tiny_checkpoint(layout, root / layout)
        convert_checkpoint(src, root / f"{layout}-llama")
        done[layout] = src, root / f"{layout}-llama"
    return done


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _token_batch(vocab_size: int) -> torch.Tensor:
    return torch.randint(0, vocab_size, (3, 24), generator=torch.Generator().manual_seed(1))


def test_baichuan_becomes_the_llama_it_was_fused_from(imported):
    from transformers import AutoModelForCausalLM, LlamaForCausalLM

    model = AutoModelForCausalLM.from_pretrained(imported["baichuan"][1]).eval()
    twin = native_twin("baichuan")
    assert type(model) is LlamaForCausalLM
    ids = _token_batch(model.config.vocab_size)
    assert (_logits(model, ids) - _logits(twin, ids)).abs().max().item() <= 1e-5


def test_baichuan2_norm_head_is_baked_into_the_llama_head(imported):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(imported["baichuan2"][1]).eval()
    twin = native_twin("baichuan2")
    ids = _token_batch(model.config.vocab_size)
    raw_head = _logits(twin, ids)
    with torch.no_grad():  # what Baichuan2's NormHead computes: every head row divided by its L2 norm
        twin.lm_head.weight.copy_(torch.nn.functional.normalize(twin.lm_head.weight, dim=1))
    converted = _logits(model, ids)
    assert (converted - _logits(twin, ids)).abs().max().item() <= 1e-5
    assert (converted - raw_head).abs().max().item() > 1e-2  # the fixture's head rows are far from unit norm
    norms = model.lm_head.weight.norm(dim=1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-5)
    # a 125k-row head is normalised a block of rows at a time: the blocks join up
    weight = twin.lm_head.weight.detach() * 3
    assert torch.equal(
        model_import.normalise_rows(weight, block_rows=7), model_import.normalise_rows(weight, block_rows=len(weight))
    )


@pytest.mark.parametrize("layout", ["baichuan", "baichuan2"])
def test_converted_checkpoint_loads_and_generates_without_remote_code(imported, layout):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    src, out = imported[layout]
    model = AutoModelForCausalLM.from_pretrained(out).eval()
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert not type(model).is_remote_code()
    config = json.loads((out / "config.json").read_text())
    assert "auto_map" not in config and config["model_type"] == "llama"
    assert "auto_map" not in json.loads((out / "tokenizer_config.json").read_text())
    assert model.generation_config.eos_token_id == 2 and model.generation_config.bos_token_id == 1

    for text in TEXTS:  # the same ids as the checkpoint's sentencepiece model, no BOS/EOS added
        assert tokenizer(text)["input_ids"] == sentencepiece_ids(src, text), text
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.unk_token) == ("<s>", "</s>", "<unk>")
    text = "患者  男，45岁\t血压 140/90 mmHg。"
    assert tokenizer.decode(tokenizer(text)["input_ids"]) == text

    prompt = tokenizer(["人民日报记者报道"], return_tensors="pt")
    with torch.no_grad():
        cached = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=True)
        uncached = model.generate(**prompt, max_new_tokens=8, do_sample=False, use_cache=False)
    assert cached.shape[1] > prompt["input_ids"].shape[1]
    assert torch.equal(cached, uncached)


def test_conversion_record_names_the_source_and_its_hash(imported):
    src, out = imported["baichuan2"]
    record = json.loads((out / "conversion.json").read_text())
    assert record["source_path"] == str(src.resolve())
    assert record["source_layout"] == "baichuan2" and record["norm_head"] is True
    assert record["target_architecture"] == "LlamaForCausalLM"
    assert record["source_sha256"] == hashlib.sha256((src / "pytorch_model.bin").read_bytes()).hexdigest()
    assert record["converted"]
    assert json.loads((imported["baichuan"][1] / "conversion.json").read_text())["norm_head"] is False


@pytest.mark.parametrize("kind", ["safetensors", "bin"])
def test_sharded_bf16_source_keeps_its_dtype_and_shards(tmp_path, monkeypatch, kind):
    """A sharded source in bfloat16 converts in bfloat16, into several output shards when large."""
    from transformers import AutoModelForCausalLM

    src = write_tiny_checkpoint("baichuan", tmp_path / "src")
    state = torch.load(src / "pytorch_model.bin", weights_only=True)
    (src / "pytorch_model.bin").unlink()
    names = sorted(state)
    weight_map = {}
    for i, part in enumerate((names[: len(names) // 2], names[len(names) // 2 :]), 1):
        shard = {n: state[n].to(torch.bfloat16) for n in part}
        if kind == "safetensors":
            file = f"model-{i:05d}-of-00002.safetensors"
            save_file(shard, src / file, metadata={"format": "pt"})
        else:
            file = f"pytorch_model-{i:05d}-of-00002.bin"
            torch.save(shard, src / file)
        weight_map.update(dict.fromkeys(part, file))
    index = "model.safetensors.index.json" if kind == "safetensors" else "pytorch_model.bin.index.json"
    (src / index).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    monkeypatch.setattr(model_import, "SHARD_BYTES", 200_000)

    record = convert_checkpoint(src, tmp_path / "out")
    out = tmp_path / "out"
    assert len(list(out.glob("model-*-of-*.safetensors"))) > 1 and (out / "model.safetensors.index.json").is_file()
    model = AutoModelForCausalLM.from_pretrained(out, dtype="auto")
    assert model.dtype == torch.bfloat16
    twin = native_twin("baichuan").to(torch.bfloat16)
    assert torch.equal(model.model.layers[1].self_attn.v_proj.weight, twin.model.layers[1].self_attn.v_proj.weight)
    digest = hashlib.sha256()
    for file in sorted(set(weight_map.values())):
        digest.update((src / file).read_bytes())
    assert record["source_sha256"] == digest.hexdigest()


def test_a_tokenizer_json_source_is_copied_without_its_remote_class(tmp_path, imported):
    from transformers import AutoTokenizer

    src = tmp_path / "src"
    shutil.copytree(imported["baichuan"][0], src)
    shutil.copyfile(imported["baichuan"][1] / "tokenizer.json", src / "tokenizer.json")
    (src / "tokenizer.model").unlink()
    convert_checkpoint(src, tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_bytes() == (src / "tokenizer.json").read_bytes()
    settings = json.loads((tmp_path / "out" / "tokenizer_config.json").read_text())
    assert "auto_map" not in settings and settings["add_bos_token"] is False
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "out")
    text = TEXTS[3]
    assert tokenizer(text)["input_ids"] == sentencepiece_ids(imported["baichuan"][0], text)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_detect_layout_of_each_published_layout(tmp_path, layout):
    expected = layout if layout.startswith("baichuan") else "native"
    assert detect_layout(write_tiny_checkpoint(layout, tmp_path / layout)) == expected


def _config_dir(path, config: dict, modeling: str | None = None):
    path.mkdir()
    (path / "config.json").write_text(json.dumps(config))
    if modeling is not None:
        (path / "modeling_baichuan.py").write_text(modeling)
    return path


def test_detect_layout_tells_alibi_and_remote_checkpoints(tmp_path):
    baichuan2_13b = {
        "architectures": ["BaichuanForCausalLM"],
        "model_type": "baichuan",
        "hidden_size": 5120,
        "model_max_length": 4096,
        "auto_map": {"AutoModelForCausalLM": "modeling_baichuan.BaichuanForCausalLM"},
    }
    assert detect_layout(_config_dir(tmp_path / "13b", baichuan2_13b)) == "baichuan-alibi"
    rotary_config_alibi_code = {**baichuan2_13b, "max_position_embeddings": 4096}
    code = "def _get_interleave(n):\n    ...  # build_alibi_tensor\n"
    assert detect_layout(_config_dir(tmp_path / "code", rotary_config_alibi_code, code)) == "baichuan-alibi"
    internlm2 = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {"AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM"},
    }
    assert detect_layout(_config_dir(tmp_path / "internlm2", internlm2)) == "remote"

    with pytest.raises(UserError, match="ALiBi.*trust_remote_code=true"):
        convert_checkpoint(tmp_path / "13b", tmp_path / "out")
    with pytest.raises(UserError, match="unknown layout"):
        convert_checkpoint(tmp_path / "internlm2", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _one_line_error(call) -> str:
    with pytest.raises(UserError) as err:
        call()
    assert "\n" not in str(err.value)
    return str(err.value)


def test_user_errors_name_what_to_fix(tmp_path, imported):
    src = imported["baichuan"][0]
    assert "does not exist" in _one_line_error(lambda: detect_layout(tmp_path / "nowhere"))
    assert "no config.json" in _one_line_error(lambda: convert_checkpoint(tmp_path, tmp_path / "out"))

    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    assert "--force" in _one_line_error(lambda: convert_checkpoint(src, out))
    assert (out / "keep.txt").is_file()
    convert_checkpoint(src, out, force=True)
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no partial or old dirs left
    assert "overlaps" in _one_line_error(lambda: convert_checkpoint(src, src, force=True))

    bad = tmp_path / "bad"
    shutil.copytree(src, bad)
    state = torch.load(bad / "pytorch_model.bin", weights_only=True)
    name = "model.layers.1.self_attn.W_pack.weight"
    state[name] = state[name][: 2 * state[name].shape[1]]
    torch.save(state, bad / "pytorch_model.bin")
    message = _one_line_error(lambda: convert_checkpoint(bad, tmp_path / "bad-out"))
    assert name in message and "[128, 64]" in message

    del state[name]
    torch.save(state, bad / "pytorch_model.bin")
    assert name in _one_line_error(lambda: convert_checkpoint(bad, tmp_path / "bad-out"))

    config = json.loads((bad / "config.json").read_text())
    del config["intermediate_size"]
    (bad / "config.json").write_text(json.dumps(config))
    assert "'intermediate_size'" in _one_line_error(lambda: convert_checkpoint(bad, tmp_path / "bad-out"))
    assert not (tmp_path / "bad-out").exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bad-out.")]


def test_cli_import_model(tmp_path, chimed_home, imported, capsys):
    src = imported["baichuan2"][0]
    out = tmp_path / "llama"
    assert main(["import-model", str(src), "--out", str(out), "--profile", "tiny"]) == 0
    printed = capsys.readouterr().out
    sha = json.loads((out / "conversion.json").read_text())["source_sha256"]
    assert "baichuan2" in printed and str(out) in printed and sha in printed

    assert main(["import-model", str(src), "--out", str(out)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].startswith("error: --out") and "--force" in error[0]
    assert main(["import-model", str(src), "--out", str(out), "--force"]) == 0
    capsys.readouterr()
    assert main(["import-model", str(tmp_path / "missing"), "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.startswith("error: model directory")
