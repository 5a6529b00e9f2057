"""``./launch.sh export``: a stage of the tiny run as one merged checkpoint that plain transformers loads
and that answers exactly as the arena serves the stage; its model card and provenance; refusals."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer

from app.contestants import resolve_contestants
from app.serving.pool import PanelRequest
from app.serving.sampling import Decoding
from chimed import main
from core.config import load_config
from tests.serving_helpers import next_token_logits
from training.evaluation.report import NOTICE
from training.export.checkpoints import export_stage
from training.manifest import read_manifest
from training.modeling import load_stage

CONVERSATION = [
    {"role": "user", "content": "头痛怎么办？"},
    {"role": "assistant", "content": "多休息，必要时就医。"},
    {"role": "user", "content": "还要注意什么？"},
]


def _export(run_id: str, stage: str, out, *extra: str) -> int:
    return main(["export", "--profile", "tiny", "--run", run_id, "--stage", stage, "--out", str(out), *extra])


@pytest.mark.parametrize("stage", ["sft", "dpo"])
def test_an_export_loads_in_plain_transformers_and_answers_as_the_arena_serves(app_home, stage, tmp_path, make_pool):
    home, run_id = app_home
    out = tmp_path / stage
    assert _export(run_id, stage, out) == 0
    model = AutoModelForCausalLM.from_pretrained(out).eval()  # no PEFT, no trust_remote_code
    tokenizer = AutoTokenizer.from_pretrained(out)
    assert type(model).__name__ == "LlamaForCausalLM" and model.dtype == torch.float32
    assert not list(out.glob("adapter_*")) and (out / "model.safetensors").is_file()

    # the run's chat template renders the same prompt ids
    (contestant,) = resolve_contestants(load_config("tiny"), [f"{run_id}/{stage}"])
    run_tokenizer = load_stage(contestant.run_dir, stage, device="cpu")[1]  # what the stages and the app use
    ids = tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]
    assert ids == run_tokenizer.apply_chat_template(CONVERSATION, add_generation_prompt=True)["input_ids"]

    # the same next-token logits and the same greedy answer as the arena's pool (serving cpt whole: with
    # app.delta_bits=8 it holds cpt as base + an 8-bit difference, an approximation by design)
    cfg = load_config("tiny", ["app.delta_bits=0"])
    pool = make_pool(cfg)
    served = next_token_logits(pool, contestant, CONVERSATION)
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
    assert torch.allclose(logits, served, atol=1e-4), (logits - served).abs().max()
    greedy = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)
    (answer,) = pool.generate([PanelRequest(contestant, CONVERSATION)], greedy).wait(timeout=300)
    generated = model.generate(torch.tensor([ids]), max_new_tokens=12)[0, len(ids) :]
    assert tokenizer.decode(generated, skip_special_tokens=True).rstrip("\ufffd") == answer.text

    # generate stops at the run tokenizer's end-of-sequence token (generation_config.json)
    assert json.loads((out / "generation_config.json").read_text())["eos_token_id"] == run_tokenizer.eos_token_id
    forced = model.generate(torch.tensor([ids]), max_new_tokens=12, sequence_bias={(tokenizer.eos_token_id,): 1000.0})[
        0, len(ids) :
    ]
    assert forced.tolist() == [tokenizer.eos_token_id]


def test_the_model_card_and_export_json_say_where_the_export_comes_from(tiny_run, use_home, tmp_path):
    home, run_id = use_home(tiny_run[0]), tiny_run[1]
    cfg = load_config("tiny")
    done = export_stage(cfg, run_id, "dpo", tmp_path / "dpo")
    manifest = read_manifest(cfg, run_id)
    pairs = len(manifest["dpo_pair_ids"])
    assert pairs > 0

    card = (done.out / "README.md").read_text(encoding="utf-8")
    assert NOTICE in card and f"run {run_id}" in card and f"| preference pairs | {pairs} " in card
    assert "cpt (full weights) + sft (LoRA adapter) + dpo (LoRA adapter), merged" in card

    info = json.loads((done.out / "export.json").read_text(encoding="utf-8"))
    assert info == done.provenance
    assert (info["run_id"], info["stage"], info["dtype"], info["dpo_pairs"]) == (run_id, "dpo", "float32", pairs)
    assert [(c["stage"], c["kind"]) for c in info["chain"]] == [("cpt", "full"), ("sft", "lora"), ("dpo", "lora")]
    assert info["data_sha256"] == manifest["data_sha256"] and info["merged"] is True
    results = json.loads((home / "runs" / run_id / "eval" / "results.json").read_text(encoding="utf-8"))
    assert info["eval_metrics"] == results["stages"]["dpo"]
    weights = load_file(done.out / "model.safetensors")
    assert info["parameters"] == sum(t.numel() for t in weights.values())  # (tied embeddings stored once)

    sft = export_stage(cfg, run_id, "sft", tmp_path / "sft").provenance
    assert "dpo_pairs" not in sft and [c["stage"] for c in sft["chain"]] == ["cpt", "sft"]


def test_a_bfloat16_export_is_the_float32_merge_rounded_once(tiny_run, use_home, tmp_path):
    use_home(tiny_run[0])
    run_id = tiny_run[1]
    assert _export(run_id, "dpo", tmp_path / "f32", "--dtype", "float32") == 0
    assert _export(run_id, "dpo", tmp_path / "bf16", "--dtype", "bfloat16") == 0
    full, half = load_file(tmp_path / "f32" / "model.safetensors"), load_file(tmp_path / "bf16" / "model.safetensors")
    assert full.keys() == half.keys()
    assert all(half[k].dtype == torch.bfloat16 and torch.equal(half[k], full[k].to(torch.bfloat16)) for k in full)
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "bf16").dtype == torch.bfloat16


def _one_error_line(capsys) -> str:
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_an_existing_directory_is_replaced_only_with_force(tiny_run, use_home, tmp_path, capsys):
    use_home(tiny_run[0])
    run_id = tiny_run[1]
    out = tmp_path / "exports" / "dpo"
    out.mkdir(parents=True)
    (out / "keep.txt").write_text("mine")
    assert _export(run_id, "dpo", out) == 2
    assert "--force" in _one_error_line(capsys)
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "mine"

    assert _export(run_id, "dpo", out, "--force") == 0
    assert f"exported {run_id}/dpo to {out}" in capsys.readouterr().out
    assert not (out / "keep.txt").exists() and (out / "model.safetensors").is_file()
    assert [p.name for p in out.parent.iterdir()] == ["dpo"]  # no temporary or set-aside directory left


@pytest.mark.parametrize(
    "change, expected",
    [
        ({"stage": "rlhf"}, "base, cpt, sft, dpo"),
        ({"run_id": "no-such-run"}, "no run 'no-such-run'"),
        ({"dtype": "int8"}, "float32, bfloat16, float16"),
        ({"out": "RUN"}, "overlaps the run directory"),
    ],
)
def test_an_unknown_run_stage_or_dtype_or_an_out_in_the_run_is_one_line(
    tiny_run, use_home, tmp_path, capsys, change, expected
):
    home = use_home(tiny_run[0])
    args = {"run_id": tiny_run[1], "stage": "dpo", "out": str(tmp_path / "dpo"), "dtype": None} | change
    if args["out"] == "RUN":
        args["out"] = str(home / "runs" / tiny_run[1] / "exports" / "dpo")
    extra = ["--dtype", args["dtype"]] if args["dtype"] else []
    assert _export(args["run_id"], args["stage"], args["out"], *extra, "--force") == 2
    line = _one_error_line(capsys)
    assert expected in line, line
    if change.get("run_id"):
        assert tiny_run[1] in line  # the runs there are
    assert not (tmp_path / "dpo").exists() and not (home / "runs" / tiny_run[1] / "exports").exists()
