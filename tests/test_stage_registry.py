"""Adding a stage touches only the stage registry and the new recipe: a throwaway stage, registered here with
a recipe written here, is trained by train-all on the tiny run, evaluated, listed by the app and accepted
by the store like the built-in ones."""

from __future__ import annotations

import json
import shutil

import pytest

from training.config import Config, load_config
from training.data.files import read_jsonl
from training.manifest import read_manifest_at
from training.modeling import load_stage
from training.stages.lifecycle import finish_stage, train_resumably
from training.stages.packing import next_token_trainer
from training.stages.paths import StagePaths
from training.stages.registry import Stage, register, run_stages, stage_names, unregister

PROBE = Stage(
    name="probe",
    parent="cpt",
    section="cpt",
    data=("cpt",),
    display_name="Probe",
    description="a throwaway second CPT pass of a few steps (a test of the stage registry)",
    runner=f"{__name__}:run_probe_stage",
)


def run_probe_stage(cfg: Config, paths: StagePaths, fingerprint: str) -> None:
    """The throwaway recipe: a few more next-token steps on ChiMed-CPT from the registered parent."""
    model, tokenizer = load_stage(paths.run_dir, paths.parent, device="cpu")
    texts = [r["text"] for r in read_jsonl(cfg.data_dir / "cpt.jsonl")][:200]
    trainer = next_token_trainer(cfg, cfg.cpt, paths, model, tokenizer, texts)
    metrics = train_resumably(trainer, paths)
    finish_stage(
        paths,
        trainer.save_model,
        kind="full",
        parent=paths.parent,
        fingerprint=fingerprint,
        metrics=metrics,
        is_main=trainer.is_world_process_zero(),
    )


@pytest.fixture
def probe_stage():
    register(PROBE)
    yield PROBE
    unregister(PROBE.name)


def test_a_registered_stage_is_trained_evaluated_listed_and_judged_like_the_others(
    probe_stage, tiny_run, tmp_path, use_home
):
    from app.contestants import available_contestants, stage_label
    from preference_store.repository import PreferenceStore
    from training.pipeline import train_all

    source, run_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source / "data", home / "data")
    shutil.copytree(source / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    assert stage_names()[-1] == "probe"
    cfg = load_config("tiny", ["cpt.max_steps=2"])
    assert run_stages(cfg) == ("base", "cpt", "sft", "dpo", "probe")  # the default alignment method, no rm

    new_run = train_all(cfg, from_stage="probe", resume_run=run_id, run_id="with-probe")

    run_dir = cfg.runs_dir / new_run
    manifest = read_manifest_at(run_dir)
    assert list(manifest["stages"]) == ["base", "cpt", "sft", "dpo", "probe"]
    probe = manifest["stages"]["probe"]
    assert (probe["kind"], probe["parent"], probe["metrics"]["steps"]) == ("full", "cpt", 2)
    results = json.loads((run_dir / "eval" / "results.json").read_text())["stages"]
    assert results["probe"]["exam_n"] > 0 and results["probe"]["general_ppl"] > 1
    assert "a throwaway second CPT pass" in (run_dir / "probe" / "README.md").read_text()
    assert f"{new_run}/probe" in [c.checkpoint_id for c in available_contestants(cfg)]
    assert stage_label("probe") == "Probe"
    with PreferenceStore(cfg.database_url) as store:
        assert [c.stage for c in store.register_checkpoints(new_run, ["probe"])] == ["probe"]
