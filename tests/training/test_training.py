"""Training backend (issue 3): the tiny train-all end to end, its manifest, SFT's loss mask, reusing stages
with --from, and the errors and dry run a user sees. Resuming after a crash and the 2-process run have
their own files (tests/training/test_training_resume.py, tests/training/test_training_distributed.py)."""

from __future__ import annotations

import json
import os
import shutil
from datetime import datetime
from pathlib import Path

import pytest
import torch

from chimed import main as cli_main
from core.config import load_config
from core.files import read_jsonl
from training.manifest import latest_run, list_runs, read_manifest, sha256_file
from training.modeling import load_stage, load_tokenizer
from training.trainer.paths import stage_paths

MANIFEST_KEYS = {"run_id", "profile", "created", "config_sha256", "data_sha256", "stages", "dpo_pair_ids", "parent_run"}
CHAIN = {"base": ("full", None), "cpt": ("full", "base"), "sft": ("lora", "cpt"), "dpo": ("lora", "sft")}


@pytest.fixture
def tiny_cfg(tiny_run, use_home):
    home, run_id = tiny_run
    use_home(home)
    return load_config("tiny"), run_id


def test_tiny_run_manifest_matches_the_contract(tiny_cfg):
    cfg, run_id = tiny_cfg
    manifest = read_manifest(cfg, run_id)
    assert set(manifest) == MANIFEST_KEYS
    assert manifest["run_id"] == run_id and manifest["profile"] == "tiny" and manifest["parent_run"] is None
    datetime.fromisoformat(manifest["created"])
    assert manifest["config_sha256"] == cfg.sha256()
    assert manifest["data_sha256"] == {
        s: sha256_file(cfg.data_dir / f"{s}.jsonl") for s in ("base", "cpt", "sft", "dpo", "kto", "grpo")
    }
    assert list(manifest["stages"]) == ["base", "cpt", "sft", "dpo"]
    for stage, (kind, parent) in CHAIN.items():
        entry = manifest["stages"][stage]
        assert set(entry) == {"path", "kind", "parent", "metrics"} | ({"method"} if stage == "dpo" else set())
        assert (entry["kind"], entry["parent"]) == (kind, parent)
        assert (cfg.runs_dir / run_id / entry["path"]).is_dir()
        assert entry["metrics"]["steps"] > 0 and entry["metrics"]["train_tokens"] > 0
    assert manifest["dpo_pair_ids"] == [p["pair_id"] for p in read_jsonl(cfg.data_dir / "dpo.jsonl")]
    method = manifest["stages"]["dpo"]["method"]  # the alignment method and its settings, as trained
    assert method["name"] == "dpo" and method["settings"] == cfg.to_dict()["dpo"]
    assert method["settings"]["loss_type"] == "sigmoid"
    assert latest_run(cfg) == run_id
    assert list_runs(cfg)[0]["complete"] is True


def test_base_is_pretrained_on_general_text_only(tiny_cfg):
    cfg, run_id = tiny_cfg
    from training.recipes.base import general_corpus, is_general_text

    base, cpt, sft = (read_jsonl(cfg.data_dir / f"{s}.jsonl") for s in ("base", "cpt", "sft"))
    assert base and all(map(is_general_text, base))
    assert 0 < sum(map(is_general_text, cpt)) < len(cpt)  # ChiMed-CPT has medical records the base never saw
    assert {r["source"] for r in cpt if not is_general_text(r)} >= {"kg"}
    metrics = read_manifest(cfg, run_id)["stages"]["base"]["metrics"]
    assert metrics["general_docs"] == len(general_corpus(base, sft)) > len(base)
    assert metrics["vocab_size"] <= cfg.model.vocab_size


def test_every_stage_loads_and_generates_with_the_saved_chat_template(tiny_cfg):
    cfg, run_id = tiny_cfg
    run_dir = cfg.runs_dir / run_id
    messages = [{"role": "user", "content": "感冒了应该注意什么？"}]
    last_logits = {}
    for stage in ("base", "cpt", "sft", "dpo"):
        model, tokenizer = load_stage(run_dir, stage, device="cpu")
        assert (run_dir / stage / "chat_template.jinja").is_file()
        prompt = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt")
        assert tokenizer.decode(prompt["input_ids"][0]) == "问：感冒了应该注意什么？\n答："
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=8, do_sample=False)
            last_logits[stage] = model(**prompt).logits[0, -1]
        new_tokens = out[0, prompt["input_ids"].shape[1] :]
        assert len(new_tokens) > 0
        assert isinstance(tokenizer.decode(new_tokens, skip_special_tokens=True), str)
    # each stage really is a different model: the adapters are applied, not silently dropped
    for earlier, later in (("base", "cpt"), ("cpt", "sft"), ("sft", "dpo")):
        assert not torch.allclose(last_logits[earlier], last_logits[later])


def test_the_chat_template_asks_a_question_as_the_plain_prompt_and_the_cpt_qa_text_do(tiny_cfg):
    from core.prompting import conversation_prompt

    cfg, run_id = tiny_cfg
    tokenizer = load_tokenizer(cfg.runs_dir / run_id / "sft")
    question = [{"role": "user", "content": "糖尿病的常见症状有哪些？"}]
    chat = conversation_prompt(tokenizer, question, chat=True)
    # SFT/DPO (chat template) and base/CPT (plain text) read one question the same way ...
    assert chat == conversation_prompt(tokenizer, question, chat=False) == "问：糖尿病的常见症状有哪些？\n答："
    # ... which is how ChiMed-CPT's QA text asks and answers
    qa_text = [r["text"] for r in read_jsonl(cfg.data_dir / "cpt.jsonl") if r["source"] == "kg_qa_text"]
    assert qa_text and all(t.startswith("问：") and "\n答：" in t for t in qa_text)
    # in a conversation each answer ends with the end-of-sequence token, where generation stops
    turns = question + [{"role": "assistant", "content": "多饮、多尿。"}, {"role": "user", "content": "还有呢？"}]
    assert (
        conversation_prompt(tokenizer, turns, chat=True)
        == f"问：糖尿病的常见症状有哪些？\n答：多饮、多尿。{tokenizer.eos_token}\n问：还有呢？\n答："
    )


def test_progress_is_logged_per_stage(tiny_cfg):
    cfg, run_id = tiny_cfg
    run_dir = cfg.runs_dir / run_id
    for stage in ("base", "cpt", "sft", "dpo"):
        records = [json.loads(line) for line in (run_dir / "logs" / stage / "trainer_log.jsonl").open()]
        losses = [r for r in records if "loss" in r]
        assert losses and all(r["stage"] == stage for r in losses)
        assert any(f.name.startswith("events.out.tfevents") for f in (run_dir / "logs" / stage).rglob("*"))
        assert (run_dir / stage / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (run_dir / ".partial").exists()  # nothing half-written left behind


def test_only_assistant_tokens_carry_sft_loss(tiny_cfg, tmp_path):
    cfg, run_id = tiny_cfg
    from training.recipes.sft import build_sft_trainer

    model, tokenizer = load_stage(cfg.runs_dir / run_id, "cpt", device="cpu")
    conversations = read_jsonl(cfg.data_dir / "sft.jsonl")
    multi = [c for c in conversations if sum(m["role"] == "assistant" for m in c["messages"]) > 1]
    single = [c for c in conversations if sum(m["role"] == "assistant" for m in c["messages"]) == 1]
    assert multi and single, "ChiMed-SFT has single- and multi-turn conversations"
    # long limits so that nothing is truncated and whole turns can be compared
    cfg.sft.max_source_length = cfg.sft.max_target_length = 2048
    chosen = multi[:2] + single[:2]
    trainer, _, _ = build_sft_trainer(cfg, stage_paths(tmp_path, "sft"), model, tokenizer, chosen)
    batch = trainer.data_collator([trainer.train_dataset[i] for i in range(len(chosen))])
    for row, conversation in enumerate(chosen):
        labels, ids = batch["labels"][row], batch["input_ids"][row]
        trained = tokenizer.decode(labels[labels != -100])
        expected = "".join(
            m["content"] + tokenizer.eos_token for m in conversation["messages"] if m["role"] == "assistant"
        )
        assert trained == expected
        masked = tokenizer.decode(ids[(labels == -100) & (batch["attention_mask"][row] == 1)])
        for message in conversation["messages"]:
            if message["role"] != "assistant":
                assert message["content"] in masked


def test_sft_truncation_keeps_the_end_of_a_long_question_and_the_answer(tiny_cfg):
    cfg, run_id = tiny_cfg
    from training.recipes.sft import tokenize_conversation

    _, tokenizer = load_stage(cfg.runs_dir / run_id, "cpt", device="cpu")
    question = "我最近总是咳嗽。" * 40 + "请问该怎么办？"
    answer = "建议多喝水，注意休息，症状持续请及时就医。"
    out = tokenize_conversation(
        tokenizer, [{"role": "user", "content": question}, {"role": "assistant", "content": answer}], 24, 64
    )
    source = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if not m]
    target = [t for t, m in zip(out["input_ids"], out["assistant_masks"]) if m]
    assert len(source) == 24
    assert tokenizer.decode(source).endswith("请问该怎么办？\n答：")
    assert tokenizer.decode(target) == answer + tokenizer.eos_token


def test_from_dpo_reuses_the_earlier_stages_of_another_run(tiny_run, use_home, tmp_path, capsys):
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / source_id, home / "runs" / source_id)
    cfg = load_config("tiny", ["train.evaluate_after=false"])
    from training.pipeline import train_all

    run_id = train_all(cfg, from_stage="dpo", resume_run=source_id)
    assert "stage 1/1 dpo" in capsys.readouterr().out
    new, old = read_manifest(cfg, run_id), read_manifest(cfg, source_id)
    assert run_id != source_id and new["parent_run"] == source_id
    for stage in ("base", "cpt", "sft"):
        assert new["stages"][stage] == old["stages"][stage]
        weights = next((cfg.runs_dir / run_id / stage).glob("*.safetensors")).name
        assert os.path.samefile(cfg.runs_dir / run_id / stage / weights, cfg.runs_dir / source_id / stage / weights)
    assert (new["stages"]["dpo"]["kind"], new["stages"]["dpo"]["parent"]) == ("lora", "sft")
    assert (
        json.loads((cfg.runs_dir / run_id / "dpo" / "stage.json").read_text())["completed"]
        >= json.loads((cfg.runs_dir / source_id / "dpo" / "stage.json").read_text())["completed"]
    )
    assert new["dpo_pair_ids"] == [p["pair_id"] for p in read_jsonl(cfg.data_dir / "dpo.jsonl")]
    model, _ = load_stage(cfg.runs_dir / run_id, "dpo", device="cpu")
    assert model is not None


def test_stage_fingerprint_follows_config_data_and_parent():
    from training.pipeline import stage_fingerprint

    cfg = load_config("tiny")
    hashes = {"cpt": "a", "sft": "b", "dpo": "c"}
    fp = stage_fingerprint(cfg, "cpt", hashes, "parent")
    assert fp == stage_fingerprint(load_config("tiny", ["eval.k_shot=3"]), "cpt", hashes, "parent")
    assert fp != stage_fingerprint(load_config("tiny", ["cpt.learning_rate=5e-4"]), "cpt", hashes, "parent")
    assert fp != stage_fingerprint(cfg, "cpt", {**hashes, "cpt": "changed"}, "parent")
    assert fp == stage_fingerprint(cfg, "cpt", {**hashes, "dpo": "changed"}, "parent")
    assert fp != stage_fingerprint(cfg, "cpt", hashes, "retrained parent")


# --- what a user sees before anything trains ----------------------------------------------------


@pytest.fixture
def hf_model_dir(tmp_path) -> Path:
    """A small local Hugging Face causal-LM directory, standing where /models/Baichuan-7B would."""
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path / "hf-llama"
    LlamaForCausalLM(
        LlamaConfig(
            vocab_size=64,
            hidden_size=16,
            intermediate_size=32,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
        )
    ).save_pretrained(path)
    return path


def test_paper_dry_run_prints_config_and_accelerate_deepspeed_commands(chimed_home, hf_model_dir, capsys):
    code = cli_main(
        [
            "train-all",
            "--profile",
            "paper",
            "--dry-run",
            f"model.path={hf_model_dir}",
            "train.num_processes=8",
            "train.num_machines=2",
            "train.machine_rank=1",
            "train.main_process_ip=10.0.0.1",
            "--run-id",
            "paper1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "learning_rate: 0.0002" in out and "deepspeed_zero_stage: 2" in out  # the resolved config
    assert f"stage 1/4 base: link {chimed_home / 'runs' / 'paper1' / 'base'} -> {hf_model_dir}" in out
    cpt_line = next(line for line in out.splitlines() if line.startswith("stage 2/4 cpt: "))
    for flag in (
        "accelerate launch",
        "--use_deepspeed",
        f"--deepspeed_config_file {chimed_home / 'runs' / 'paper1' / 'deepspeed_zero2.json'}",
        "--num_processes 16",
        "--num_machines 2",
        "--machine_rank 1",
        "--main_process_ip 10.0.0.1",
        "--main_process_port 29500",
        "--deepspeed_multinode_launcher standard",
        "-m training.pipeline",
        "--stage cpt",
    ):
        assert flag in cpt_line
    if not torch.cuda.is_available():
        assert "# warning: train.bf16=true needs a CUDA GPU" in out
    assert not (chimed_home / "runs").exists()  # a dry run writes nothing


@pytest.mark.parametrize(
    "overrides, message",
    [
        (
            ["model.path=/nonexistent/Baichuan-7B", "train.bf16=false", "train.deepspeed_zero_stage=0"],
            "model.path=/nonexistent/Baichuan-7B is not a Hugging Face model directory",
        ),
        (["train.bf16=false", "train.deepspeed_zero_stage=0"], "model.path is empty"),
    ],
)
def test_paper_base_model_errors_are_one_line(chimed_home, overrides, message, capsys):
    assert cli_main(["train-all", "--profile", "paper", *overrides]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and message in err and "\n" not in err


def test_a_model_that_is_not_a_causal_lm_is_refused(chimed_home, tmp_path, capsys):
    from transformers import T5Config

    T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1, num_heads=2).save_pretrained(tmp_path / "t5")
    assert (
        cli_main(
            [
                "train-all",
                "--profile",
                "paper",
                f"model.path={tmp_path / 't5'}",
                "train.bf16=false",
                "train.deepspeed_zero_stage=0",
            ]
        )
        == 2
    )
    assert "is a 't5' model, not a causal language model" in capsys.readouterr().err


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
@pytest.mark.parametrize(
    "override, setting",
    [("train.bf16=true", "train.bf16=true"), ("train.deepspeed_zero_stage=2", "train.deepspeed_zero_stage=2")],
)
def test_gpu_only_options_on_a_cpu_machine_are_one_line(chimed_home, override, setting, capsys):
    assert cli_main(["train-all", "--profile", "tiny", override]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {setting} needs") and "\n" not in err
    assert not (chimed_home / "runs").exists()


def test_cpt_medical_repeats_out_of_range_stops_before_any_work(chimed_home, capsys):
    assert cli_main(["train-all", "--profile", "tiny", "cpt.medical_repeats=0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: cpt.medical_repeats=0") and "\n" not in err
    assert not (chimed_home / "runs").exists() and not (chimed_home / "data").exists()


def test_cpt_repeats_the_medical_records_and_reads_the_general_share_once():
    from training.recipes.cpt import training_texts

    records = [
        {"text": "感冒是常见病。", "source": "kg"},
        {"text": "今天天气晴。", "source": "general_people_daily"},
        {"text": "问：感冒看哪个科？\n答：内科", "source": "kg_qa_text"},
    ]
    texts = training_texts(records, 3)
    assert texts[:3] == [r["text"] for r in records]  # one whole pass first
    assert texts.count("感冒是常见病。") == texts.count("问：感冒看哪个科？\n答：内科") == 3
    assert texts.count("今天天气晴。") == 1
    assert training_texts(records, 1) == [r["text"] for r in records]


def test_from_without_resume_run_is_refused(chimed_home, capsys):
    assert cli_main(["train-all", "--profile", "tiny", "--from", "sft"]) == 2
    assert "--from sft needs --resume-run ID" in capsys.readouterr().err


def test_overriding_one_lora_key_keeps_the_stage_defaults():
    cfg = load_config("tiny", ["dpo.lora.r=4", "sft.lora.dropout=0.1"])
    assert (cfg.dpo.lora.r, cfg.dpo.lora.alpha, cfg.dpo.lora.dropout) == (4, 16, 0.05)  # paper DPO: alpha 16
    assert (cfg.sft.lora.r, cfg.sft.lora.alpha, cfg.sft.lora.dropout) == (8, 32, 0.1)  # paper SFT: alpha 32
