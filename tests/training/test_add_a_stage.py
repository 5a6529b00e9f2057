"""Adding a stage touches no file of the tree: docs/add-a-stage.md's code (a settings class with its own config
section, a registry record and a recipe) is run as it is, and the throwaway stage is trained by train-all on the
tiny run, evaluated, served, exported, listed by the app and accepted by the store like the built-in ones."""

from __future__ import annotations

import json
import re
import shutil
import sys
import types
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from core.config import load_config
from core.registry import get_stage, is_chat_stage, run_stages, stage_names, unregister
from training.manifest import read_manifest_at

PAGE = Path(__file__).resolve().parents[2] / "docs" / "add-a-stage.md"


def page_code() -> str:
    (code,) = re.findall(r"```python\n(.*?)```", PAGE.read_text(encoding="utf-8"), flags=re.S)
    return code


@pytest.fixture
def probe_stage():
    """The page's code, run as a module of its own (as a user's plugin would be)."""
    module = types.ModuleType("add_a_stage_page")
    sys.modules[module.__name__] = module
    exec(compile(page_code(), str(PAGE), "exec"), module.__dict__)
    yield module
    unregister("probe")
    del sys.modules[module.__name__]


def test_a_stage_with_its_own_section_is_trained_evaluated_served_exported_and_judged(
    probe_stage, tiny_run, tmp_path, use_home, make_pool
):
    from app.contestants import available_contestants, stage_label
    from app.openai_server import build_server
    from preference_store.repository import PreferenceStore
    from training.export.checkpoints import export_stage
    from training.pipeline import train_all

    source, run_id = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source / "data", home / "data")
    shutil.copytree(source / "runs" / run_id, home / "runs" / run_id, symlinks=True)
    assert stage_names()[-1] == "probe" and get_stage("probe").settings is probe_stage.ProbeConfig
    assert not is_chat_stage("probe")

    # its own config section: defaults from its class, overridable like any other key, unknown keys refused
    assert load_config("tiny").probe.max_steps == probe_stage.ProbeConfig.max_steps
    cfg = load_config("tiny", ["probe.max_steps=2"])
    assert cfg.probe.max_steps == 2 and cfg.to_dict()["probe"]["block_size"] == 64
    with pytest.raises(Exception, match=r"unknown key probe\.steps"):
        load_config("tiny", ["probe.steps=2"])
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

    # served: plain 问：/答： prompts (not a chat stage), an answer of the tokens asked for
    with (
        PreferenceStore.from_config(cfg) as store,
        TestClient(build_server(cfg, new_run, store, make_pool(cfg))) as http,
    ):
        assert f"{new_run}/probe" in [m["id"] for m in http.get("/v1/models").json()["data"]]
        answer = http.post(
            "/v1/chat/completions",
            json={
                "model": f"{new_run}/probe",
                "messages": [{"role": "user", "content": "头痛伴发热三天，应该怎么办？"}],
                "max_tokens": 3,
                "temperature": 0,
            },
        )
        assert answer.status_code == 200 and answer.json()["usage"]["completion_tokens"] == 3

    exported = export_stage(cfg, new_run, "probe", tmp_path / "probe-export", dtype="float32")
    assert (tmp_path / "probe-export" / "config.json").is_file() and exported.out == tmp_path / "probe-export"

    assert f"{new_run}/probe" in [c.checkpoint_id for c in available_contestants(cfg)]
    assert stage_label("probe") == "Probe"
    with PreferenceStore(cfg.database_url) as store:
        assert [c.stage for c in store.register_checkpoints(new_run, ["probe"])] == ["probe"]


def test_a_section_named_twice_is_refused(probe_stage):
    from core.config import config_class
    from core.registry import Stage, register

    register(
        Stage(
            name="probe2",
            parent="cpt",
            section="probe",
            settings=probe_stage.ProbeConfig,
            data=("cpt",),
            display_name="Probe 2",
            description="a second record on the same section",
        )
    )
    try:
        with pytest.raises(ValueError, match="config section 'probe' is named twice"):
            config_class()
    finally:
        unregister("probe2")
