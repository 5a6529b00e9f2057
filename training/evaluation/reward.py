"""The reward model in the evaluation: how well it ranks held-out pairs, and its mean reward as a judge.

- A run with an rm stage: the share of held-out pairs (``eval/pref.jsonl``, and the clinicians' held-out pairs
  ``eval/pref_clinician.jsonl``) whose chosen answer gets the higher reward, as the results' ``rm`` row
  (``pref_acc``, ``pref_acc_clinician``).
- The judge (``eval.reward_judge``: "" = the run's own rm stage, if any; a run id = that run's rm stage, so that
  runs aligned by different methods are scored by one reward model): the mean reward of each generative
  stage's greedy answers to the held-out questions, the very answers BLEU/ROUGE score (nothing is generated
  again), as ``reward_judge_mean`` in every stage's row; the judge and its own accuracy go to results.json's
  ``reward_judge``. Raw rewards are comparable between stages under one judge only.

The measurements are cached (``eval/cache/reward.json``) under the reward models' training fingerprints, the
eval sets and the answers scored.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import sha256_json, write_json_atomic
from training.fingerprints import recorded_fingerprint
from training.manifest import MANIFEST, read_manifest_at

REWARD_STAGE = "rm"
CACHE_VERSION = 1


def judge_run(cfg: Config, run_id: str, manifest: dict) -> str | None:
    """The run whose rm stage judges ``run_id``'s answers (``eval.reward_judge``), None when there is none to
    use; a named run that is missing or has no rm stage is a one-line :class:`UserError` (before any work)."""
    name = cfg.eval.reward_judge.strip()
    if not name:
        return run_id if REWARD_STAGE in manifest["stages"] else None
    if name != run_id and not (cfg.runs_dir / name / MANIFEST).is_file():
        raise UserError(
            f"eval.reward_judge={name}: there is no run {name} under {cfg.runs_dir}; name a run with "
            "an rm stage, or leave it empty to judge with the run's own"
        )
    judge = manifest if name == run_id else read_manifest_at(cfg.runs_dir / name)
    if REWARD_STAGE not in judge["stages"]:
        raise UserError(
            f"eval.reward_judge={name}: run {name} has no rm stage to judge with; train one "
            f"(align.reward_model=true) or leave eval.reward_judge empty"
        )
    return name


def reward_metrics(
    cfg: Config, run_path: Path, manifest: dict, judge: str | None, sets, generations: dict[str, list[dict]]
) -> dict:
    """``{"stages": {stage: metrics}, "reward_judge": {...}}`` to merge into results.json: the run's own rm
    row (its accuracy on every held-out pair set), and with a ``judge`` (:func:`judge_run`) the mean reward of
    each stage's ``generations`` (in the order of ``sets.qa``) plus the judge's checkpoint and accuracy.
    Empty when the run has no rm stage and no judge."""
    own = run_path.name if REWARD_STAGE in manifest["stages"] else None
    runs = list(dict.fromkeys(r for r in (own, judge) if r))
    if not runs:
        return {}
    answers = {stage: [g["answer"] for g in gens] for stage, gens in generations.items()}
    cache = run_path / "eval" / "cache" / "reward.json"
    key = _cache_key(cfg, runs, judge, sets, answers)
    if cfg.eval.use_cache and key and cache.is_file():
        cached = json.loads(cache.read_text(encoding="utf-8"))
        if cached.get("key") == key:
            print("reward model: unchanged since its last evaluation, reusing it", flush=True)
            return cached["metrics"]

    from training.modeling import default_device
    from training.trainer.reward_model import load_reward_model

    accuracy, means = {}, {}
    for run in runs:
        print(
            f"reward model {run}/{REWARD_STAGE}: held-out pairs" + (", judging the answers" if run == judge else ""),
            flush=True,
        )
        model, tokenizer = load_reward_model(cfg.runs_dir / run, device=default_device())
        accuracy[run] = pair_accuracy(model, tokenizer, sets.pref, cfg.eval.batch_size)
        if run == judge:
            means = {
                stage: judge_mean(model, tokenizer, sets.qa, stage_answers, cfg.eval.batch_size)
                for stage, stage_answers in answers.items()
            }
        del model
    metrics: dict = {"stages": {stage: {"reward_judge_mean": mean} for stage, mean in means.items()}}
    if own:
        metrics["stages"][REWARD_STAGE] = accuracy[own]
    if judge:
        metrics["reward_judge"] = {"checkpoint": f"{judge}/{REWARD_STAGE}", **accuracy[judge]}
    if key:
        write_json_atomic(cache, {"key": key, "metrics": metrics})
    return metrics


def pair_accuracy(model, tokenizer, pref: dict[str, list[dict]], batch_size: int) -> dict:
    """``pref_acc`` (and ``pref_acc_clinician``): the share of each held-out pair set (``{"pref": pairs,
    "pref_clinician": pairs}``) whose chosen answer the reward model scores above the rejected one, with the
    set's size (``pref_n``...); None for an empty set."""
    from training.trainer.reward_model import conversation_rewards

    out = {}
    for name, pairs in pref.items():
        key = "pref_acc" + name.removeprefix("pref")
        chosen = conversation_rewards(model, tokenizer, [p["prompt"] + p["chosen"] for p in pairs], batch_size)
        rejected = conversation_rewards(model, tokenizer, [p["prompt"] + p["rejected"] for p in pairs], batch_size)
        right = sum(c > r for c, r in zip(chosen, rejected, strict=True))
        out[key] = right / len(pairs) if pairs else None
        out["pref_n" + name.removeprefix("pref")] = len(pairs)
    return out


def judge_mean(model, tokenizer, qa: list[dict], answers: list[str], batch_size: int) -> float | None:
    """The mean reward of ``answers`` to the held-out questions ``qa`` (same order); None without any."""
    from training.trainer.reward_model import reward_scores

    if not answers:
        return None
    rewards = reward_scores(model, tokenizer, [q["messages"] for q in qa], answers, batch_size)
    return round(sum(rewards) / len(rewards), 6)


def _cache_key(cfg: Config, runs: list[str], judge: str | None, sets, answers: dict[str, list[str]]) -> str | None:
    """What the reward measurements depend on; None (no caching) when a reward model has no fingerprint."""
    fingerprints = {run: recorded_fingerprint(cfg.runs_dir / run, REWARD_STAGE) for run in runs}
    if not all(fingerprints.values()):
        return None
    return sha256_json(
        {
            "version": CACHE_VERSION,
            "fingerprints": fingerprints,
            "judge": judge,
            "sets": sets.hashes,
            "answers": answers,
            "batch_size": cfg.eval.batch_size,
        }
    )
