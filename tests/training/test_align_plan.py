"""Which stages a run trains follows the config: the alignment stage is named after align.method, the reward
model trains only when asked for, and `--from align` / `--stages align` name the configured method's stage."""

from __future__ import annotations

import pytest

from core.config import load_config
from core.errors import UserError
from core.registry import align_methods, answering, chat_stage_names, run_stages
from training.pipeline import train_all


def test_each_method_names_the_alignment_stage_of_the_run():
    assert align_methods() == ("dpo", "kto", "orpo", "simpo", "grpo")
    assert run_stages(load_config("tiny")) == ("base", "cpt", "sft", "dpo")  # DPO runs keep their layout
    for method in align_methods():
        assert run_stages(load_config("tiny", [f"align.method={method}"])) == ("base", "cpt", "sft", method)
    with_rm = load_config("tiny", ["align.method=grpo", "align.reward_model=true"])
    assert run_stages(with_rm) == ("base", "cpt", "sft", "rm", "grpo")
    assert answering(run_stages(with_rm)) == ["base", "cpt", "sft", "grpo"]  # the reward model answers nothing
    assert set(chat_stage_names()) == {"sft", *align_methods()}
    assert not hasattr(load_config("tiny").eval, "chat_stages")  # the registry is the only list


def test_from_align_reuses_the_stages_before_the_configured_method(chimed_home, capsys):
    cfg = load_config("tiny", ["align.method=simpo"])
    train_all(cfg, from_stage="align", resume_run="earlier", dry_run=True)
    out = capsys.readouterr().out
    assert [line.split()[-1] for line in out.splitlines() if line.startswith("# reuse")] == ["earlier"] * 3
    assert "# reuse sft from run earlier" in out and "stage 1/1 simpo:" in out


@pytest.mark.parametrize(
    "options, message",
    [
        (
            {"stages": ["kto"]},
            "unknown stage 'kto' in --stages: this config aligns with align.method=dpo "
            "(set align.method=kto to train it)",
        ),
        ({"from_stage": "rm", "resume_run": "r"}, "unknown stage 'rm' for --from: the config does not include it"),
        ({"stages": ["ppo"]}, "unknown stage 'ppo' in --stages: choose from base, cpt, sft, dpo, align"),
    ],
)
def test_a_stage_the_config_does_not_train_is_a_one_line_error(chimed_home, options, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(").replace(")", r"\)")) as err:
        train_all(load_config("tiny"), dry_run=True, **options)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    "override, message",
    [
        ("align.method=ppo", "config: align.method='ppo': choose one of dpo, kto, orpo, simpo, grpo"),
        ("dpo.loss_type=bogus", "config: dpo.loss_type='bogus': choose one of TRL's DPO losses"),
    ],
)
def test_an_unknown_method_or_loss_is_a_one_line_config_error(override, message):
    with pytest.raises(UserError, match="^" + message.replace("(", r"\(")):
        load_config("tiny", [override])
