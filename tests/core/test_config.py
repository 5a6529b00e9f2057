"""The config tree: one source of defaults, profiles, overrides and clear errors."""

import pytest

from chimed import main
from core.config import load_config
from core.errors import UserError


def test_paper_profile_carries_the_seed_hyper_parameters():
    cfg = load_config("paper")
    assert (cfg.cpt.block_size, cfg.cpt.learning_rate, cfg.cpt.epochs) == (1024, 2e-4, 3.0)
    assert (cfg.cpt.warmup_ratio, cfg.cpt.weight_decay) == (0.05, 0.01)
    assert cfg.cpt.per_device_batch_size * cfg.cpt.gradient_accumulation_steps == 8
    assert (cfg.sft.lora.r, cfg.sft.lora.alpha, cfg.sft.lora.dropout) == (8, 32, 0.05)
    assert (cfg.sft.learning_rate, cfg.sft.weight_decay) == (2e-5, 0.05)
    assert (cfg.sft.max_source_length, cfg.sft.max_target_length) == (256, 256)
    assert (cfg.dpo.lora.r, cfg.dpo.lora.alpha, cfg.dpo.lora.dropout) == (8, 16, 0.05)
    assert (cfg.dpo.learning_rate, cfg.dpo.per_device_batch_size, cfg.dpo.gradient_accumulation_steps) == (2e-5, 8, 4)
    assert cfg.train.deepspeed_zero_stage == 2


def test_profiles_differ_only_where_they_must():
    tiny, demo = load_config("tiny"), load_config("demo")
    assert tiny.model.hidden_size < demo.model.hidden_size
    # LoRA shapes come from the single default, not re-declared per profile; the demo widens only the
    # SFT adapter's rank and targets, its alpha and dropout still come from that default
    paper = load_config("paper")
    assert tiny.sft.lora == paper.sft.lora and tiny.dpo.lora == demo.dpo.lora == paper.dpo.lora
    assert (demo.sft.lora.r, demo.sft.lora.alpha, demo.sft.lora.dropout) == (
        16,
        paper.sft.lora.alpha,
        paper.sft.lora.dropout,
    )
    assert "down_proj" in demo.sft.lora.target_modules


def test_overrides_are_typed():
    cfg = load_config("tiny", ["cpt.learning_rate=1e-4", "data.strict=true", "sft.lora.r=4"])
    assert cfg.cpt.learning_rate == 1e-4 and cfg.data.strict is True and cfg.sft.lora.r == 4


@pytest.mark.parametrize(
    "override, message",
    [
        ("cpt.nope=1", "unknown key cpt.nope"),
        ("model.hidden_size=big", "model.hidden_size must be int"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(UserError, match=message):
        load_config("tiny", [override])


def test_cli_prints_one_line_error_for_a_bad_key(capsys):
    assert main(["build-data", "--profile", "tiny", "cpt.nope=1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: config: unknown key cpt.nope")


def test_database_url_follows_chimed_home(chimed_home, monkeypatch):
    assert load_config("tiny").database_url == f"sqlite:///{chimed_home / 'preferences.db'}"
    monkeypatch.setenv("CHIMED_DATABASE_URL", "sqlite:////tmp/other.db")
    assert load_config("tiny").database_url == "sqlite:////tmp/other.db"
