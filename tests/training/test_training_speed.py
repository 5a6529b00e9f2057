"""The fast log-probability path of the TRL stages (issue 20, ``training/trainer/logprobs.py``): padding-free
batches and the plain LM head give the numbers TRL's padded, fused path gives (per-token log-probabilities,
losses, gradients, DPO's chosen/rejected log-probs and its SFT term, the precomputed reference), on real
batches of the tiny run; the settings are checked, recorded and fingerprinted; CPT's packed blocks are cached
by content; a stage is saved once."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch

from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl
from tests.lora_weights import randomize_lora
from training.modeling import load_stage
from training.trainer.logprobs import resolve_lm_head_loss, set_logprob_forward
from training.trainer.paths import stage_paths

TOL = 1e-5  # per token (the issue's bound); sums over a sequence also get float32's relative rounding
RTOL = 1e-6


@pytest.fixture
def tiny_cfg(tiny_run, use_home):
    home, run_id = tiny_run
    use_home(home)
    return load_config("tiny"), run_id


def _grads(model) -> dict:
    return {n: p.grad.detach().clone() for n, p in model.named_parameters() if p.grad is not None}


def _compare_paths(trainer, inputs, forward_outputs):
    """Run ``forward_outputs(trainer)`` and the loss with its gradients on TRL's padded fused path, then on
    padding-free + plain, and return both results."""
    base = trainer.model.get_base_model()
    results = []
    for head, padding_free in (("fused", False), ("plain", True)):
        set_logprob_forward(base, head=head, padding_free=padding_free)
        trainer.model.zero_grad()
        loss = trainer.compute_loss(trainer.model, dict(inputs))
        loss.backward()
        with torch.no_grad():
            results.append((forward_outputs(trainer), float(loss), _grads(trainer.model)))
    return results


def _assert_close(a, b, what: str, rtol: float = 0.0) -> None:
    assert a.shape == b.shape, what
    excess = ((a.float() - b.float()).abs() - TOL - rtol * a.float().abs()).max().item()
    assert excess <= 0, f"{what}: differs by {(a.float() - b.float()).abs().max().item():.2e}"


def test_padding_free_plain_sft_equals_the_padded_fused_computation(tiny_cfg, tmp_path):
    cfg, run_id = tiny_cfg
    from training.recipes.sft import build_sft_trainer

    model, tokenizer = load_stage(cfg.runs_dir / run_id, "cpt", device="cpu")
    conversations = read_jsonl(cfg.data_dir / "sft.jsonl")[:8]
    trainer, _, record = build_sft_trainer(cfg, stage_paths(tmp_path, "sft"), model, tokenizer, conversations)
    assert (record["lm_head_loss"], record["padding_free"]) == ("plain", True)  # the defaults on a CPU
    trainer.model.eval()  # no dropout: the two paths see the same weights
    randomize_lora(trainer.model)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(8)])
    lengths = inputs["attention_mask"].sum(1)
    assert lengths.min() < lengths.max(), "the batch must have padding for the test to mean anything"

    def per_token(trainer):
        labels = inputs["labels"]
        out = trainer.model(
            input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"], labels=labels, fused_lm_head=True
        )
        return out.log_probs, out.label_mask, out.entropy, out.is_top1

    (old, old_loss, old_grads), (new, new_loss, new_grads) = _compare_paths(trainer, inputs, per_token)
    assert torch.equal(old[1], new[1])  # the loss mask: assistant tokens only, as before
    assert int(new[1].sum()) == int((inputs["labels"][:, 1:] != -100).sum())
    _assert_close(old[0], new[0], "per-token log-probabilities (= minus the per-token losses)")
    _assert_close(old[2], new[2], "per-token entropy")
    assert torch.equal(old[3], new[3])
    assert abs(old_loss - new_loss) <= TOL and old_loss > 0
    assert set(old_grads) == set(new_grads) and old_grads
    for name in old_grads:
        _assert_close(old_grads[name], new_grads[name], f"gradient of {name}")
    # and not equal by accident: a different batch gives different numbers
    assert new[0].abs().sum() > 0


def test_dpo_logps_and_sft_term_are_unchanged_by_the_fast_path(tiny_cfg, tmp_path):
    cfg, run_id = tiny_cfg
    cfg.dpo.sft_weight = 2.0  # the demo's RPO-style SFT term
    from training.recipes.dpo import build_dpo_trainer

    model, tokenizer = load_stage(cfg.runs_dir / run_id, "sft", device="cpu")
    pairs = read_jsonl(cfg.data_dir / "dpo.jsonl")[:4]
    trainer, _, record = build_dpo_trainer(cfg, stage_paths(tmp_path, "dpo"), model, tokenizer, pairs)
    assert record["padding_free"] and record["lm_head_loss"] == "plain"
    trainer.model.eval()
    randomize_lora(trainer.model)
    inputs = trainer.data_collator([trainer.train_dataset[i] for i in range(4)])
    assert not bool(inputs["attention_mask"].all())

    def logps(trainer):
        labels = inputs["input_ids"].masked_fill(inputs["completion_mask"] == 0, -100)
        kwargs = {
            "input_ids": inputs["input_ids"],
            "attention_mask": inputs["attention_mask"],
            "labels": labels,
            "fused_lm_head": True,
        }
        policy = trainer.model(**kwargs).log_probs.sum(1)
        with trainer.model.disable_adapter():
            reference = trainer.model(**kwargs).log_probs.sum(1)
        return policy, reference

    (old, old_loss, old_grads), (new, new_loss, new_grads) = _compare_paths(trainer, inputs, logps)
    for (a, b), what in zip(zip(old, new), ("policy", "reference")):
        chosen_a, rejected_a = a.chunk(2)
        chosen_b, rejected_b = b.chunk(2)
        _assert_close(chosen_a, chosen_b, f"{what} chosen log-probs", RTOL)
        _assert_close(rejected_a, rejected_b, f"{what} rejected log-probs", RTOL)
    assert not torch.allclose(old[0], old[1])  # the adapter matters: policy and reference differ
    # the reference log-probs precomputed before the loop (dpo.precompute_reference) are the in-loop ones
    assert record["reference_precomputed"] is True
    reference_chosen, reference_rejected = old[1].chunk(2)
    _assert_close(inputs["ref_chosen_logps"], reference_chosen, "precomputed reference chosen log-probs", RTOL)
    _assert_close(inputs["ref_rejected_logps"], reference_rejected, "precomputed reference rejected log-probs", RTOL)
    # the loss (sigmoid + 2 x SFT on the chosen answer) and its gradients
    assert abs(old_loss - new_loss) <= TOL + RTOL * abs(old_loss)
    for name in old_grads:
        _assert_close(old_grads[name], new_grads[name], f"gradient of {name}", RTOL)
    # the SFT term alone: minus the mean log-probability of the chosen answers' tokens
    completion = inputs["completion_mask"][:, 1:].chunk(2)[0].sum()
    sft_old, sft_new = -old[0].chunk(2)[0].sum() / completion, -new[0].chunk(2)[0].sum() / completion
    assert abs(float(sft_old) - float(sft_new)) <= TOL


def test_the_stages_record_their_log_probability_path(tiny_cfg):
    cfg, run_id = tiny_cfg
    for stage in ("sft", "dpo"):
        metrics = json.loads((cfg.runs_dir / run_id / stage / "stage.json").read_text())["metrics"]
        assert metrics["lm_head_loss"] == "plain" and metrics["padding_free"] is True
        assert 0 < metrics["padding_share"] < 1  # padded batches: this much was left out
    assert metrics["reference_precomputed"] is True and metrics["reference_precompute_s"] > 0
    for stage in ("base", "cpt", "sft", "dpo"):  # trained on the CPU with train.keep_freed_memory on (default)
        metrics = json.loads((cfg.runs_dir / run_id / stage / "stage.json").read_text())["metrics"]
        assert metrics["freed_memory_kept"] is True, stage


def test_the_settings_are_checked_and_fingerprinted(tiny_cfg):
    cfg, _ = tiny_cfg
    with pytest.raises(UserError, match="sft.lm_head_loss='triton'"):
        load_config("tiny", ["sft.lm_head_loss=triton"])
    from training.fingerprints import stage_fingerprint

    hashes = {split: "x" for split in ("base", "cpt", "sft", "dpo")}
    fast = stage_fingerprint(cfg, "sft", hashes, "p")
    padded = stage_fingerprint(load_config("tiny", ["sft.padding_free=false"]), "sft", hashes, "p")
    fused = stage_fingerprint(load_config("tiny", ["sft.lm_head_loss=fused"]), "sft", hashes, "p")
    assert len({fast, padded, fused}) == 3
    assert stage_fingerprint(load_config("tiny", ["sft.padding_free=false"]), "dpo", hashes, "p") == stage_fingerprint(
        cfg, "dpo", hashes, "p"
    )


def test_auto_picks_the_fused_kernel_only_where_triton_serves(tiny_cfg, monkeypatch):
    cfg, run_id = tiny_cfg
    model, _ = load_stage(cfg.runs_dir / run_id, "cpt", device="cpu")
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert resolve_lm_head_loss("auto", model, cpu) == "plain"
    assert resolve_lm_head_loss("fused", model, cpu) == "fused"
    import training.trainer.logprobs as logprobs

    monkeypatch.setattr(logprobs, "triton_serves", lambda device: device.type == "cuda")
    assert resolve_lm_head_loss("auto", model, cuda) == "fused"
    assert resolve_lm_head_loss("plain", model, cuda) == "plain"
    # a model whose logits are softcapped is scored by TRL's kernel, which knows how
    model.config.final_logit_softcapping = 30.0
    assert resolve_lm_head_loss("auto", model, cpu) == "fused"
    with pytest.raises(UserError, match="final_logit_softcapping"):
        resolve_lm_head_loss("plain", model, cpu)


def test_packed_blocks_are_cached_by_content(tiny_cfg, tmp_path, monkeypatch):
    cfg, run_id = tiny_cfg
    import training.trainer.packing as packing

    _, tokenizer = load_stage(cfg.runs_dir / run_id, "base", device="cpu")
    texts = [r["text"] for r in read_jsonl(cfg.data_dir / "cpt.jsonl")][:300]
    cache = tmp_path / "blocks"
    first = packing.cached_blocks(texts, tokenizer, 64, cache)
    assert first["input_ids"] == packing.pack_into_blocks(texts, tokenizer, 64)["input_ids"]

    def packed_again(*args):
        raise AssertionError("the same texts were tokenized and packed again")

    monkeypatch.setattr(packing, "pack_into_blocks", packed_again)
    assert packing.cached_blocks(texts, tokenizer, 64, cache)["input_ids"] == first["input_ids"]
    # another text, another block size: packed anew
    for changed, size in ((texts[:-1] + [texts[-1] + "。"], 64), (texts, 32)):
        with pytest.raises(AssertionError, match="packed again"):
            packing.cached_blocks(changed, tokenizer, size, cache)
    assert len([p for p in cache.iterdir() if not p.name.startswith(".")]) == 1


def test_a_stage_is_saved_once_after_its_last_step(tiny_cfg, tmp_path):
    cfg, run_id = tiny_cfg
    from training.trainer.packing import next_token_trainer

    cfg.cpt.max_steps, cfg.train.save_steps = 3, 2
    model, tokenizer = load_stage(cfg.runs_dir / run_id, "base", device="cpu")
    texts = [r["text"] for r in read_jsonl(cfg.data_dir / "cpt.jsonl")][:200]
    paths = stage_paths(tmp_path, "cpt")
    paths.work.mkdir(parents=True)
    next_token_trainer(cfg, cfg.cpt, paths, model, tokenizer, texts).train()
    # the checkpoint for resuming at step 2 is there; none after the last step (the stage saves its model)
    assert sorted(p.name for p in paths.work.glob("checkpoint-*")) == ["checkpoint-2"]


def test_packed_batches_train_as_transformers_collator_and_attention_mask_would(tiny_cfg):
    """CPT's collator stacks the full blocks without padding or an attention mask: the same ids and labels as
    transformers' language-modeling collator, the same loss and gradients, the same tokens counted."""
    cfg, run_id = tiny_cfg
    from transformers import DataCollatorForLanguageModeling

    from training.trainer.packing import BlockCollator, pack_into_blocks

    model, tokenizer = load_stage(cfg.runs_dir / run_id, "base", device="cpu")
    texts = [r["text"] for r in read_jsonl(cfg.data_dir / "cpt.jsonl")][:100]
    blocks = [{"input_ids": ids} for ids in pack_into_blocks(texts, tokenizer, 64)["input_ids"][:6]]
    blocks[0]["input_ids"][5] = tokenizer.pad_token_id  # a pad id in the text is not learned, as before
    ours = BlockCollator(tokenizer.pad_token_id)(blocks)
    theirs = DataCollatorForLanguageModeling(tokenizer, mlm=False)(blocks)
    assert torch.equal(ours["input_ids"], theirs["input_ids"]) and torch.equal(ours["labels"], theirs["labels"])
    assert int((ours["labels"] == -100).sum()) == 1 and set(ours) == {"input_ids", "labels"}

    model.train()
    results = []
    for batch in (ours, dict(theirs)):
        model.zero_grad()
        loss = model(**batch).loss
        loss.backward()
        results.append((loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()}))
    _assert_close(results[0][0], results[1][0], "loss", RTOL)
    for name, grad in results[0][1].items():
        _assert_close(grad, results[1][1][name], f"gradient of {name}", RTOL)


def test_keeping_freed_memory_is_recorded_and_changes_no_loss(tiny_run, tmp_path):
    """train.keep_freed_memory (on by default) makes glibc keep a CPU step's freed memory for the next step (the
    page faults it spares are a benchmark's figure: benchmarks/bench_freed_memory.py). It changes no number: the
    same dpo steps trained on and off, each in its own process, log the same losses, and each stage.json says
    which it was."""
    import subprocess
    import sys

    source_home, run_id = tiny_run
    home = tmp_path / "home"
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    env = {**os.environ, "CHIMED_HOME": str(home)}
    env.pop("CHIMED_DATABASE_URL", None)
    runs = home / "runs"
    for setting in ("true", "false"):
        subprocess.run(
            [
                sys.executable,
                "-m",
                "chimed",
                "train-all",
                "--profile",
                "tiny",
                "--from",
                "align",
                "--resume-run",
                run_id,
                "--run-id",
                f"kept-{setting}",
                "dpo.max_steps=3",
                "train.logging_steps=1",
                "train.evaluate_after=false",
                f"train.keep_freed_memory={setting}",
            ],
            cwd=Path(__file__).resolve().parents[2],
            env=env,
            check=True,
            capture_output=True,
        )

    def losses(run: str) -> list[float]:
        return [r["loss"] for r in read_jsonl(runs / run / "logs" / "dpo" / "trainer_log.jsonl") if "loss" in r]

    def kept(run: str) -> bool:
        return json.loads((runs / run / "dpo" / "stage.json").read_text())["metrics"]["freed_memory_kept"]

    assert kept("kept-true") is True and kept("kept-false") is False
    assert len(losses("kept-true")) == 3 and losses("kept-true") == losses("kept-false")
