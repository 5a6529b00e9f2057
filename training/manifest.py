"""``runs/<run_id>/manifest.json``: the contract between training and the app (docs/design.md).

    {"run_id": str, "profile": str, "created": iso8601, "config_sha256": str, "data_sha256": {split: str},
     "stages": {"base"|"cpt"|"sft"|"dpo": {"path": str (relative to the run dir), "kind": "full"|"lora",
                                           "parent": stage name or null, "metrics": {...}}},
     "dpo_pair_ids": [str, ...], "parent_run": str or null}

A stage appears in ``stages`` only once its directory is complete (it was renamed into place), so
whatever a manifest lists can be loaded. Whether the run as a whole finished (every requested stage)
is kept beside it in ``run_state.json``, which the pipeline owns; :func:`list_runs` and
:func:`latest_run` read both.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import sha256_file, write_json_atomic
from core.registry import stage_names
from training.data.layout import TRAINING_FILES

MANIFEST = "manifest.json"
RUN_STATE = "run_state.json"  # {"requested_stages": [...], "complete": bool}; pipeline bookkeeping


def run_dir(cfg: Config, run_id: str) -> Path:
    """Directory of one run: ``cfg.runs_dir / run_id``."""
    return cfg.runs_dir / run_id


def new_manifest(cfg: Config, run_id: str, data_sha256: dict[str, str], parent_run: str | None = None) -> dict:
    """A manifest with no stages yet, for a run that is about to train."""
    return {
        "run_id": run_id,
        "profile": cfg.profile,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "config_sha256": cfg.sha256(),
        "data_sha256": dict(data_sha256),
        "stages": {},
        "dpo_pair_ids": [],
        "parent_run": parent_run,
    }


def stage_entry(path: str, kind: str, parent: str | None, metrics: dict) -> dict:
    """One ``stages[...]`` entry: ``kind`` is "full" (whole weights) or "lora" (an adapter on ``parent``)."""
    if kind not in ("full", "lora"):
        raise ValueError(f"stage kind must be full or lora, got {kind!r}")
    return {"path": path, "kind": kind, "parent": parent, "metrics": metrics}


def write_manifest(run_path: Path, manifest: dict) -> None:
    """Atomically (re)write ``run_path/manifest.json``; stages are kept in pipeline order."""
    manifest = dict(manifest)
    manifest["stages"] = {s: manifest["stages"][s] for s in stage_names() if s in manifest["stages"]}
    write_json_atomic(run_path / MANIFEST, manifest)


def read_manifest(cfg: Config, run_id: str) -> dict:
    """The manifest of ``run_id``; a one-line :class:`UserError` if the run does not exist."""
    return read_manifest_at(run_dir(cfg, run_id))


def read_manifest_at(run_path: Path) -> dict:
    """The manifest in a run directory (for code that holds a path rather than a config)."""
    path = Path(run_path) / MANIFEST
    if not path.is_file():
        raise UserError(
            f"no run at {run_path} ({MANIFEST} missing): list runs under the runs directory "
            "or train one with ./launch.sh train-all"
        )
    return json.loads(path.read_text(encoding="utf-8"))


def read_run_state(run_path: Path) -> dict:
    """``run_state.json`` of a run (``{}`` when the run predates it or was never started)."""
    path = Path(run_path) / RUN_STATE
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}


def run_is_complete(run_path: Path) -> bool:
    """True when every stage the run was asked for is in its manifest."""
    return bool(read_run_state(run_path).get("complete"))


def list_runs(cfg: Config, complete_only: bool = False) -> list[dict]:
    """Manifests of the runs under ``cfg.runs_dir``, newest first.

    Each manifest gets one extra key, ``"complete"`` (bool), that is not stored in the file: whether
    the run finished every stage it was asked for. Runs still training (or interrupted) list the
    stages that are already complete and loadable.
    """
    if not cfg.runs_dir.is_dir():
        return []
    runs = []
    for path in cfg.runs_dir.iterdir():
        if not (path / MANIFEST).is_file():
            continue
        manifest = json.loads((path / MANIFEST).read_text(encoding="utf-8"))
        manifest["complete"] = run_is_complete(path)
        if manifest["complete"] or not complete_only:
            runs.append(manifest)
    # run ids are timestamps by default, but users may name runs: order by creation time, then id
    runs.sort(key=lambda m: (m.get("created", ""), m["run_id"]), reverse=True)
    return runs


def latest_run(cfg: Config, complete_only: bool = True) -> str | None:
    """Id of the newest run that finished every requested stage (any run with ``complete_only=False``)."""
    runs = list_runs(cfg, complete_only=complete_only)
    return runs[0]["run_id"] if runs else None


def interrupted_run(cfg: Config, plan: list[str]) -> str | None:
    """The newest run that did not finish and that the same profile, config and stages would resume
    (train-all without --run-id picks it up; a run trained from a parent is never resumed so)."""
    for run in list_runs(cfg):
        state = read_run_state(cfg.runs_dir / run["run_id"])
        if (
            not run["complete"]
            and run["profile"] == cfg.profile
            and run["config_sha256"] == cfg.sha256()
            and state.get("requested_stages") == plan
            and not run["parent_run"]
        ):
            return run["run_id"]
    return None


def new_run_id(cfg: Config) -> str:
    """A new run id: the time now, with -2, -3, ... when a run folder of that name exists."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    run_id, n = stamp, 1
    while (cfg.runs_dir / run_id).exists():
        n += 1
        run_id = f"{stamp}-{n}"
    return run_id


def data_hashes(cfg: Config) -> dict[str, str]:
    """``{"base": sha, "cpt": sha, "sft": sha, "dpo": sha}`` of the training files in ``cfg.data_dir``."""
    return {split: sha256_file(cfg.data_dir / name) for split, name in TRAINING_FILES.items()}
