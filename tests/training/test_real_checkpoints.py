"""The paper path on the checkpoints researchers bring: tiny random-weight checkpoints written in each
published layout (tokenizers trained here, nothing downloaded) go through train-all --profile paper (a few
steps per stage, fp32, no DeepSpeed), the evaluation and the running app's /compare."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import pytest
import torch

from chimed import main as cli_main
from core.config import load_config
from tests.layouts import LAYOUTS, write_tiny_checkpoint
from training.manifest import read_manifest_at
from training.pipeline import train_all

pytestmark = pytest.mark.slow

# the paper profile shrunk to a few steps on CPU; the data settings are the tiny profile's, so the tiny build
# is reused as it is
SHRUNK = [
    "data.max_entities=400",
    "data.people_daily_max_docs=400",
    "data.reviews_max_docs=200",
    "data.general_eval_docs=40",
    "train.bf16=false",
    "train.deepspeed_zero_stage=0",
    "train.logging_steps=1",
    "train.save_steps=100",
    "train.report_to=[]",
    "cpt.max_steps=3",
    "cpt.block_size=64",
    "cpt.per_device_batch_size=2",
    "cpt.gradient_accumulation_steps=1",
    "sft.max_steps=3",
    "sft.per_device_batch_size=2",
    "sft.max_source_length=64",
    "sft.max_target_length=32",
    "sft.learning_rate=1e-3",
    "dpo.max_steps=2",
    "dpo.per_device_batch_size=2",
    "dpo.gradient_accumulation_steps=1",
    "dpo.max_length=96",
    "dpo.learning_rate=1e-3",
    "eval.k_shot=1",
    "eval.exam_max=12",
    "eval.qa_max=3",
    "eval.general_max=6",
    "eval.pref_max=8",
    "eval.max_new_tokens=8",
    "eval.max_length=256",
    "eval.batch_size=8",
]
CONVERTED = {"baichuan", "baichuan2"}


def error_lines(capsys) -> list[str]:
    """The ``error:`` lines the CLI printed (progress bars of model loading share stderr); no traceback."""
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return [line for line in err.splitlines() if line.startswith("error:")]


def paper_config(model_dir: Path, *extra: str):
    return load_config("paper", [*SHRUNK, f"model.path={model_dir}", *extra])


@pytest.fixture(scope="module")
def paper_runs(tmp_path_factory, tiny_data_home) -> tuple[Path, dict[str, str]]:
    """(home, {layout: run_id}): one shrunk paper train-all per published layout, evaluated."""
    import os

    home = tmp_path_factory.mktemp("paper_runs")
    shutil.copytree(tiny_data_home / "data", home / "data")
    old = os.environ.get("CHIMED_HOME")
    os.environ["CHIMED_HOME"] = str(home)
    runs = {}
    try:
        for layout in LAYOUTS:
            model_dir = write_tiny_checkpoint(layout, home / "models" / layout)
            runs[layout] = train_all(paper_config(model_dir), run_id=f"paper-{layout}")
    finally:
        if old is None:
            os.environ.pop("CHIMED_HOME", None)
        else:
            os.environ["CHIMED_HOME"] = old
    return home, runs


@pytest.mark.parametrize("layout", LAYOUTS)
def test_every_layout_trains_every_stage_with_finite_losses_and_is_evaluated(paper_runs, layout):
    home, runs = paper_runs
    run_dir = home / "runs" / runs[layout]
    manifest = read_manifest_at(run_dir)
    assert list(manifest["stages"]) == ["base", "cpt", "sft", "dpo"]
    base = manifest["stages"]["base"]["metrics"]
    assert base["preflight"]["dtype"] == "float32" and base["preflight"]["cache_max_abs_diff"] < 1e-3
    if layout in CONVERTED:  # converted once into the run, never linked, its remote code never run
        assert not (run_dir / "base").is_symlink()
        assert json.loads((run_dir / "base" / "config.json").read_text())["architectures"] == ["LlamaForCausalLM"]
        assert base["conversion"]["source_layout"] == layout
        assert len(base["conversion"]["source_sha256"]) == 64
    else:
        assert (run_dir / "base").is_symlink() and base["layout"] == "native"
    for stage in ("cpt", "sft", "dpo"):
        loss = manifest["stages"][stage]["metrics"]["train_loss"]
        assert math.isfinite(loss) and loss > 0, (stage, loss)
    for stage in ("sft", "dpo"):  # every linear layer of the blocks, attention and MLP, never the head
        lora = manifest["stages"][stage]["metrics"]["lora"]
        assert {"self_attn.q_proj", "self_attn.o_proj", "mlp.down_proj"} <= set(lora["target_modules"])
        assert "lm_head" not in lora["target_modules"]
        assert 0 < lora["trainable_params"] < lora["total_params"]
    # a checkpoint's own chat template (qwen2 stands for an -Instruct model) is kept; the others get the project's
    from core.prompting import CHAT_TEMPLATE

    template = (
        json.loads((run_dir / "sft" / "tokenizer_config.json").read_text()).get("chat_template")
        or (run_dir / "sft" / "chat_template.jinja").read_text()
    )
    assert ("<|im_start|>" in template) == (layout == "qwen2")
    assert (template == CHAT_TEMPLATE) == (layout != "qwen2")
    results = json.loads((run_dir / "eval" / "results.json").read_text())["stages"]
    assert list(results) == ["base", "cpt", "sft", "dpo"]
    for stage, metrics in results.items():
        assert metrics["exam_n"] > 0 and 0 <= metrics["exam_acc"] <= 1
        assert math.isfinite(metrics["general_ppl"]) and metrics["general_ppl"] > 1, (stage, metrics)
        assert metrics["bleu1"] is not None
    generations = [json.loads(line) for line in (run_dir / "eval" / "generations" / "dpo.jsonl").open()]
    assert generations


def test_the_running_app_answers_with_the_four_stages_of_every_layout(paper_runs, start_app):
    from gradio_client import Client

    home, runs = paper_runs
    client = Client(start_app(home), verbose=False)
    listed = set(client.predict(api_name="/contestants"))
    for layout, run_id in runs.items():
        ids = [f"{run_id}/{stage}" for stage in ("base", "cpt", "sft", "dpo")]
        assert set(ids) <= listed
        # sampled (a random-weight model's greedy answer can be one token repeated, e.g. the newline of ChatML)
        made = client.predict("高血压患者饮食上要注意什么？", ids, True, 1.0, 1.0, 12, 7, api_name="/compare")
        assert made["errors"] == {}, (layout, made["errors"])
        reveal = client.predict(
            made["comparison_id"], ranking={label: place for place, label in enumerate("ABCD", 1)}, api_name="/judge"
        )["reveal"]  # blind: the names come with the judgment
        answers = {reveal[a["label"]]: a["text"] for a in made["answers"]}
        assert set(answers) == set(ids)
        assert all(text.strip() for text in answers.values()), (layout, answers)


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_conversation_has_the_same_token_ids_in_sft_dpo_the_evaluation_and_the_arena(paper_runs, layout):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from app.serving.pool import prompt_ids
    from core.prompting import conversation_prompt
    from training.evaluation.loglik import make_request, token_ids
    from training.evaluation.preference import answer_text
    from training.modeling import load_stage
    from training.recipes.sft import tokenize_conversation

    home, runs = paper_runs
    model, tokenizer = load_stage(home / "runs" / runs[layout], "sft", device="cpu")
    prompt = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]
    answer = [{"role": "assistant", "content": "少吃盐，多吃蔬菜水果，建议到心内科就诊。"}]
    # SFT: the whole conversation, the answer's tokens as targets
    sft = tokenize_conversation(tokenizer, prompt + answer, 512, 512)
    n_prompt = sft["assistant_masks"].index(1)
    whole = list(tokenizer.apply_chat_template(prompt + answer)["input_ids"])
    assert sft["input_ids"] == whole
    # the arena's prompt and the evaluation's prompt and scored answer
    arena = prompt_ids(tokenizer, prompt)
    assert arena == sft["input_ids"][:n_prompt]
    assert token_ids(tokenizer, conversation_prompt(tokenizer, prompt, chat=True)) == arena
    request = make_request(tokenizer, *answer_text(tokenizer, prompt, answer, chat=True), 512)
    assert list(request.context) + list(request.continuation) == whole
    # DPO: TRL's own tokenization of the pair
    args = DPOConfig(
        output_dir=str(home / f"dpo-probe-{layout}"), bf16=False, use_cpu=True, report_to="none", max_length=512
    )
    pair = Dataset.from_list(
        [{"prompt": prompt, "chosen": answer, "rejected": [{"role": "assistant", "content": "多吃咸菜。"}]}]
    )
    trainer = DPOTrainer(model=model, ref_model=None, args=args, train_dataset=pair, processing_class=tokenizer)
    row = trainer.train_dataset[0]
    assert list(row["prompt_ids"]) == arena
    assert list(row["prompt_ids"]) + list(row["chosen_ids"]) == whole


def test_a_base_whose_forward_is_not_finite_is_refused_before_anything_is_written(chimed_home, capsys):
    from transformers import AutoModelForCausalLM

    model_dir = write_tiny_checkpoint("llama", chimed_home.parent / "nan-llama")
    model = AutoModelForCausalLM.from_pretrained(model_dir)
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    model.save_pretrained(model_dir)
    capsys.readouterr()
    assert cli_main(["train-all", "--profile", "paper", *SHRUNK, f"model.path={model_dir}"]) == 2
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: pre-flight of model.path=")
    assert "non-finite logits" in err[0]
    assert not (chimed_home / "runs").exists() and not (chimed_home / "data").exists()


def test_a_non_finite_loss_stops_the_stage_and_keeps_its_last_checkpoint(tiny_data_home, chimed_home, capsys):
    shutil.copytree(tiny_data_home / "data", chimed_home / "data")
    model_dir = write_tiny_checkpoint("qwen3", chimed_home.parent / "qwen3")
    code = cli_main(
        [
            "train-all",
            "--profile",
            "paper",
            *SHRUNK,
            f"model.path={model_dir}",
            "--run-id",
            "nan",
            "--stages",
            "base,cpt",
            "cpt.learning_rate=1e30",
            "cpt.warmup_ratio=0",
            "cpt.max_steps=6",
            "train.save_steps=1",
        ]
    )
    err = error_lines(capsys)
    assert code == 2 and len(err) == 1, err
    assert err[0].startswith("error: cpt: a non-finite") and "is not complete" in err[0]
    run_dir = chimed_home / "runs" / "nan"
    assert "cpt" not in read_manifest_at(run_dir)["stages"] and not (run_dir / "cpt").exists()
    kept = sorted((run_dir / ".partial" / "cpt").glob("checkpoint-*"))
    assert kept, "the last checkpoint before the bad step is kept for resuming"
    from safetensors.torch import load_file

    weights = load_file(str(kept[-1] / "model.safetensors"))
    assert all(torch.isfinite(t).all() for t in weights.values())


@pytest.mark.parametrize(
    "targets, message",
    [
        (
            "[q_proj,W_pack]",
            "'W_pack' matches no linear layer of Qwen2ForCausalLM; its decoder blocks have: "
            "mlp.down_proj, mlp.gate_proj, mlp.up_proj, self_attn.k_proj, self_attn.o_proj, "
            "self_attn.q_proj, self_attn.v_proj",
        ),
        ("[layers.0.self_attn.q_proj]", "'layers.0.self_attn.q_proj' misses decoder blocks 1 of 2"),
    ],
)
def test_a_lora_target_list_that_misses_modules_is_refused_before_training(chimed_home, capsys, targets, message):
    model_dir = write_tiny_checkpoint("qwen2", chimed_home.parent / "qwen2")
    assert (
        cli_main(
            [
                "train-all",
                "--profile",
                "paper",
                *SHRUNK,
                f"model.path={model_dir}",
                f"sft.lora.target_modules={targets}",
            ]
        )
        == 2
    )
    err = error_lines(capsys)
    assert len(err) == 1 and err[0].startswith("error: sft.lora.target_modules: ") and message in err[0]
    assert not (chimed_home / "runs").exists()


def test_lora_on_a_fused_attention_model_adapts_its_attention_projection():
    from peft import get_peft_model
    from transformers import Phi3Config, Phi3ForCausalLM

    from core.config import LoraConfig
    from training.trainer.lora import lora_record, peft_lora_config

    model = Phi3ForCausalLM(
        Phi3Config(
            vocab_size=64,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            pad_token_id=0,
        )
    )
    config = peft_lora_config(LoraConfig(), model, "sft.lora.target_modules")
    record = lora_record(get_peft_model(model, config), config)
    assert record["target_modules"] == ["mlp.down_proj", "mlp.gate_up_proj", "self_attn.o_proj", "self_attn.qkv_proj"]
    assert record["adapted_layers"] == 8  # 4 per block, the fused q/k/v projection included
    assert 0 < record["trainable_params"] < record["total_params"]


def test_the_project_chat_template_replaces_a_checkpoints_own_when_the_config_says_so(tmp_path):
    from core.prompting import CHAT_TEMPLATE
    from training.modeling import load_tokenizer

    model_dir = write_tiny_checkpoint("qwen2", tmp_path / "qwen2")
    assert "<|im_start|>" in load_tokenizer(model_dir).chat_template  # auto: an -Instruct model keeps its own
    assert load_tokenizer(model_dir, chat_template="project").chat_template == CHAT_TEMPLATE
    mistral = load_tokenizer(write_tiny_checkpoint("mistral", tmp_path / "mistral"))
    assert mistral.chat_template == CHAT_TEMPLATE and mistral.pad_token == mistral.eos_token  # no pad: eos
