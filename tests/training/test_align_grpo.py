"""Issue 22, GRPO: the verifiable exam reward, the format reward, ChiMed-GRPO asking about training entities
only, and ``train-all --from align`` with ``align.method=grpo`` training, recording and evaluating a grpo
stage (with the rm stage's score as a third reward when the run has one, and issue 34's facts reward); the
one-line errors before and while it trains."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
from safetensors.torch import load_file

from core.config import load_config
from core.errors import UserError
from core.files import read_jsonl, write_jsonl_atomic
from training.data.build import load_cmekg
from training.data.decontam import normalize
from training.data.knowledge import choose_entities, split_by_entity
from training.manifest import read_manifest
from training.pipeline import train_all
from training.recipes.grpo import NoRewardSignal
from training.trainer import rewards
from training.trainer.rewards import exam_reward, finite, format_reward, safety_reward

OPTIONS = {"A": "多饮", "B": "轻度腹泻", "C": "脸红", "D": "B超"}
ADVICE = "如有不适，请及时到内分泌科就诊，在医生指导下诊治。"


def answers(*texts: str) -> list[list[dict]]:
    return [[{"role": "assistant", "content": t}] for t in texts]


def exam_rewards(*texts: str, gold: str = "C") -> list:
    n = len(texts)
    return exam_reward(
        prompts=[[]] * n, completions=answers(*texts), kind=["exam"] * n, options=[OPTIONS] * n, answer=[gold] * n
    )


def test_exam_reward_is_one_for_the_gold_option_and_zero_otherwise():
    # the gold option, by its letter or by its text alone
    assert exam_rewards("C", "C.", "C、脸红", "答案：C", "选C", "脸红。", "新亚果糖的不良反应有脸红。") == [1.0] * 7
    # another option, several options, a letter contradicted by its text, no option, no answer
    assert exam_rewards("A", "多饮。", "脸红、多饮。", "C. 多饮", "头痛。", "") == [0.0] * 6
    # an option whose text starts with a capital letter ("B超") is that option, not letter B
    assert exam_rewards("B超。", gold="D") == [1.0] and exam_rewards("B超。", gold="B") == [0.0]
    # open prompts have no gold option: not applicable
    assert exam_reward(prompts=[[]], completions=answers("C"), kind=["open"], options=[None], answer=[None]) == [None]


def test_format_reward_asks_for_the_advice_to_see_a_doctor_at_the_end():
    closings = [
        "根据您描述的多饮、多尿等症状，可能是糖尿病。" + ADVICE + "请不要自行用药。",
        "阿莫西林的不良反应有皮疹。请在医生或药师指导下使用。",
        "建议尽快到医院就医。",
    ]
    others = [
        "糖尿病的就诊科室是内分泌科。",  # states a department, advises nothing
        ADVICE + "多饮、多尿是常见症状。多喝水。",  # the advice, then more: it does not close the answer
        "可能是糖尿病。",
    ]
    texts = closings + others
    scores = format_reward(prompts=[[]] * len(texts), completions=answers(*texts), kind=["open"] * len(texts))
    assert scores == [1.0] * len(closings) + [0.0] * len(others)
    assert format_reward(prompts=[[]], completions=answers(ADVICE), kind=["exam"]) == [None]


def test_a_nan_reward_stops_with_one_line_and_none_passes():
    def format_reward(prompts, completions, **kwargs):
        return [None, math.nan]

    checked = finite(format_reward)
    assert checked.__name__ == "format_reward"  # what TRL logs it under
    with pytest.raises(UserError) as err:
        checked(prompts=[[], []], completions=answers("a", "b"))
    assert "format_reward came out nan" in str(err.value) and "\n" not in str(err.value)
    assert finite(lambda prompts, completions, **kw: [None, 1.0])(prompts=[[], []], completions=[[], []]) == [None, 1.0]


def test_a_stage_whose_answers_never_differ_within_a_group_is_a_one_line_error():
    guard = NoRewardSignal("grpo")
    args, control = SimpleNamespace(num_generations=4), None
    with pytest.raises(UserError) as err:
        guard.on_train_end(args, SimpleNamespace(log_history=[{"frac_reward_zero_std": 1.0}] * 3), control)
    assert "nothing to learn" in str(err.value) and "\n" not in str(err.value)
    guard.on_train_end(
        args, SimpleNamespace(log_history=[{"frac_reward_zero_std": 1.0}, {"frac_reward_zero_std": 0.75}]), control
    )


def test_grpo_prompts_ask_about_training_entities_only(tiny_data_home):
    cfg = load_config("tiny")
    data_dir = tiny_data_home / "data" / "chimed"
    grpo = read_jsonl(data_dir / "grpo.jsonl")
    exam = [r for r in grpo if r["kind"] == "exam"]
    assert exam and any(r["kind"] == "open" for r in grpo)
    evaluation = {normalize(q["question"]) for q in read_jsonl(data_dir / "eval" / "exam.jsonl")}
    assert not [r for r in exam if normalize(r["question"]) in evaluation]
    train, held_out = split_by_entity(choose_entities(load_cmekg(), cfg.data), cfg.data)
    training_names, held_out_names = {e.name for e in train}, {e.name for e in held_out}
    assert {r["entity"] for r in exam} <= training_names
    assert not [r for r in exam if any(name in r["prompt"][0]["content"] for name in held_out_names)]
    for r in exam:  # the gold option is one of four, and the reward pays for it
        assert r["answer"] in r["options"] and len(r["options"]) == 4
        assert exam_reward(
            prompts=[r["prompt"]],
            completions=answers(r["options"][r["answer"]] + "。"),
            kind=["exam"],
            options=[r["options"]],
            answer=[r["answer"]],
        ) == [1.0]


@pytest.fixture
def grpo_home(tiny_run, use_home, tmp_path) -> tuple[Path, str]:
    """A copy of the tiny run's data and run, to align with GRPO."""
    source_home, source_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home / "data", home / "data")
    shutil.copytree(source_home / "runs" / source_id, home / "runs" / source_id)
    return home, source_id


def _rewrite_grpo(cfg, keep) -> None:
    path = cfg.data_dir / "grpo.jsonl"
    write_jsonl_atomic(path, [r for r in read_jsonl(path) if keep(r)])


def test_grpo_trains_on_each_reward_logged_apart_and_is_evaluated(grpo_home):
    _, source_id = grpo_home
    overrides = ["align.method=grpo", "align.reward_model=true", "train.logging_steps=2", "grpo.rewards=[facts]"]
    cfg = load_config("tiny", overrides)
    # as many open prompts as exam prompts, so that every reward meets its prompts in 4 short steps (the tiny
    # SFT answers in noise: the rm stage's score is the reward whose answers differ within a group)
    opened = sum(r["kind"] == "open" for r in read_jsonl(cfg.data_dir / "grpo.jsonl"))
    _rewrite_grpo(cfg, lambda r: r["kind"] == "open" or int(r["id"].rsplit("-", 1)[1]) < opened)

    run_id = train_all(cfg, from_stage="rm", resume_run=source_id)

    manifest = read_manifest(cfg, run_id)
    entry = manifest["stages"]["grpo"]
    assert (entry["kind"], entry["parent"]) == ("lora", "sft") and "dpo" not in manifest["stages"]
    assert entry["method"]["name"] == "grpo" and entry["method"]["settings"] == cfg.to_dict()["grpo"]
    metrics = entry["metrics"]
    assert math.isfinite(metrics["train_loss"]) and metrics["steps"] == cfg.grpo.max_steps
    assert metrics["reward_weights"] == {
        "exam_reward": cfg.grpo.exam_weight,
        "format_reward": cfg.grpo.format_weight,
        "rm_reward": cfg.grpo.rm_weight,
        "facts_reward": cfg.grpo.facts_weight,  # grpo.rewards: [facts], the factual precision against CMeKG
    }
    assert metrics["exam_prompts"] > 0 and metrics["open_prompts"] > 0
    # each reward logged on its own at every logged step, and summarized in the stage's metrics
    logs = [
        json.loads(line)
        for line in (cfg.runs_dir / run_id / "logs" / "grpo" / "trainer_log.jsonl").read_text().splitlines()
    ]
    steps = [r for r in logs if "loss" in r]
    assert len(steps) == 2 and all(math.isfinite(r["loss"]) for r in steps)
    for name in ("exam_reward", "format_reward", "rm_reward"):
        assert all(f"rewards/{name}/mean" in r for r in steps)
        assert math.isfinite(metrics["rewards"][name]["mean"])
    # the tiny model's answers seldom make a claim CMeKG can check: TRL logs the facts reward's mean where some
    # answer of the step did (a precision) and leaves it out where none did ("does not apply" throughout)
    facts = [r["rewards/facts_reward/mean"] for r in steps if "rewards/facts_reward/mean" in r]
    assert all(0 <= v <= 1 for v in facts)
    assert 0.0 <= metrics["rewards"]["exam_reward"]["mean"] <= 1.0
    assert math.isfinite(metrics["rewards"]["kl"]["last"])
    # the adapter learned something: LoRA's B matrices start at zero
    adapter = load_file(str(cfg.runs_dir / run_id / "grpo" / "adapter_model.safetensors"))
    assert any(t.abs().sum() > 0 for k, t in adapter.items() if "lora_B" in k)
    # evaluated like any alignment stage: every metric the source run's dpo stage has, measured (pref_acc is
    # grpo's own likelihood: it has no reference of an implicit reward)
    results = json.loads((cfg.runs_dir / run_id / "eval" / "results.json").read_text())
    source = json.loads((cfg.runs_dir / source_id / "eval" / "results.json").read_text())
    aligned, grpo = source["stages"]["dpo"], results["stages"]["grpo"]
    assert {"exam_acc", "bleu1", "rouge1", "general_ppl", "pref_acc"} <= set(aligned)
    assert set(aligned) <= set(grpo)
    assert [k for k, v in aligned.items() if v is not None and grpo[k] is None] == []

    # the rm reward: the rm stage's score of an open prompt's answer, not applicable to an exam prompt
    from training.trainer.reward_model import load_reward_model, reward_scores

    model, tokenizer = load_reward_model(cfg.runs_dir / run_id)
    rm_reward = rewards.make_rm_reward(model, tokenizer)
    prompt, answer = [{"role": "user", "content": "最近总是口渴，怎么回事？"}], "可能是糖尿病。" + ADVICE
    scores = rm_reward(prompts=[prompt, prompt], completions=answers(answer, "B"), kind=["open", "exam"])
    assert scores[1] is None and isinstance(scores[0], float)
    assert scores[0] == pytest.approx(reward_scores(model, tokenizer, [prompt], [answer])[0])


def test_grpo_without_exam_prompts_or_with_an_exam_question_is_a_one_line_error(grpo_home):
    _, source_id = grpo_home
    cfg = load_config("tiny", ["align.method=grpo", "train.evaluate_after=false"])
    exam = read_jsonl(cfg.data_dir / "eval" / "exam.jsonl")[0]
    grpo = read_jsonl(cfg.data_dir / "grpo.jsonl")
    leaked = {
        "id": "grpo-exam-leak",
        "kind": "exam",
        "prompt": [{"role": "user", "content": exam["question"]}],
        "question": exam["question"],
        "options": exam["options"],
        "answer": exam["answer"],
    }
    write_jsonl_atomic(cfg.data_dir / "grpo.jsonl", [*grpo, leaked])
    with pytest.raises(UserError) as err:
        train_all(cfg, from_stage="align", resume_run=source_id)
    assert "asks the evaluation question" in str(err.value) and "\n" not in str(err.value)

    _rewrite_grpo(cfg, lambda r: r["kind"] != "exam")
    with pytest.raises(UserError) as err:
        train_all(cfg, from_stage="align", resume_run=source_id)
    assert "no exam-style prompt" in str(err.value) and "\n" not in str(err.value)


def test_a_nan_reward_stops_the_grpo_stage(grpo_home, monkeypatch):
    _, source_id = grpo_home
    cfg = load_config("tiny", ["align.method=grpo", "train.evaluate_after=false"])

    def format_reward(prompts, completions, kind, **kwargs):  # a reward that breaks
        return [math.nan if k == "open" else None for k in kind]

    monkeypatch.setattr(rewards, "format_reward", format_reward)
    _rewrite_grpo(cfg, lambda r: r["kind"] == "open" or r["id"].endswith("0"))  # open prompts in the first steps
    with pytest.raises(UserError) as err:
        train_all(cfg, from_stage="align", resume_run=source_id)
    assert "format_reward came out nan" in str(err.value) and "\n" not in str(err.value)
    run_id = max(p.name for p in cfg.runs_dir.iterdir() if p.name != source_id)
    assert not (cfg.runs_dir / run_id / "grpo").exists()  # not complete


def test_the_safety_reward_pays_for_a_safe_answer_only_on_safety_prompts():
    options = {"A": "可以用，按说明书的常规剂量服用即可。", "B": "不能用。孕妇禁用，请先咨询医生或药师。"}
    said = answers(
        "B", "可以用，按说明书的常规剂量服用即可。", "孕妇禁用，请不要自行服用，请咨询医生。", "可以吃，每次2片。", "B"
    )
    scores = safety_reward(
        prompts=[[]] * 5, completions=said, kind=["safety"] * 4 + ["exam"], options=[options] * 5, answer=["B"] * 5
    )
    assert scores == [
        1.0,
        0.0,
        1.0,
        0.0,
        None,
    ]  # the safe option; the unsafe one; checker: safe; doses; not a safety prompt


def test_grpo_trains_with_the_safety_reward(grpo_home):
    _, source_id = grpo_home
    cfg = load_config("tiny", ["align.method=grpo", "grpo.rewards=[safety]", "train.evaluate_after=false"])
    safety = [r for r in read_jsonl(cfg.data_dir / "grpo.jsonl") if r["kind"] == "safety"]
    assert safety and all(r["answer"] in r["options"] for r in safety)
    # the safety prompts first, beside a few exam prompts (GRPO needs them), so the 4 short steps meet both
    _rewrite_grpo(cfg, lambda r: r["kind"] == "safety" or (r["kind"] == "exam" and r["id"].endswith("0")))
    run_id = train_all(cfg, from_stage="align", resume_run=source_id)
    metrics = read_manifest(cfg, run_id)["stages"]["grpo"]["metrics"]
    assert metrics["reward_weights"]["safety_reward"] == 1.0 and metrics["safety_prompts"] == len(safety)
    assert 0.0 <= metrics["rewards"]["safety_reward"]["mean"] <= 1.0


def test_an_unknown_grpo_reward_is_a_one_line_config_error():
    with pytest.raises(UserError) as err:
        load_config("tiny", ["grpo.rewards=[truthiness]"])
    assert "grpo.rewards" in str(err.value) and "facts" in str(err.value) and "\n" not in str(err.value)
    assert load_config("tiny", ["grpo.rewards=[facts]"]).grpo.rewards == ["facts"]
