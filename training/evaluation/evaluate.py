"""``./launch.sh eval --run ID [--compare ID2]``: evaluate every stage of a run, as the paper's Tables 4-6.

For each stage of the run (base, cpt, sft, dpo), in order:
  1. exam accuracy, k-shot and 0-shot (and by answer letter if asked), on the held-out exam and on any real
     exam file the user names (``eval.user_exam_files``);
  2. greedy answers to the held-out questions -> BLEU-1/2/4, ROUGE-1/2/L, distinct-2, and the factual
     precision of their claims against CMeKG (``training/evaluation/facts.py``);
  3. perplexity on held-out general text;
  4. log-likelihoods of the held-out preference pairs -> preference accuracy (dpo: implicit reward against
     its reference, the sft stage).
Then the reward model (``training/evaluation/reward.py``): the rm stage's accuracy on the held-out pairs, and
the judge's (``eval.reward_judge``) mean reward of every stage's answers of step 2.
Then ``runs/<id>/eval/``: results.json (docs/design.md contract), results.md, stages.png, generations/, and a
model card README.md in every stage directory; with ``compare`` also compare_<ID2>.md/.json.

A stage's measurements are cached (``eval/cache/<stage>.json``) under a key made of its training
fingerprint, the eval sets and the eval settings, so re-evaluating, or evaluating a run that reused
another run's stages (``--from dpo --resume-run``), only computes what changed.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from core.config import Config
from core.errors import UserError
from core.files import (
    read_jsonl,
    sha256_file,
    sha256_json,
    write_json_atomic,
    write_jsonl_atomic,
    write_text_atomic,
)
from core.registry import answering, chat_stage_names, get_stage, is_chat_stage, stage_names
from training.evaluation import facts, report, reward
from training.evaluation.exam import read_exam, score_exam, split_demonstrations
from training.evaluation.generation import qa_generations, qa_metrics
from training.evaluation.perplexity import general_perplexity
from training.evaluation.preference import implicit_reward_accuracy, likelihood_accuracy, pair_logprobs
from training.evaluation.safety import safety_metrics
from training.fingerprints import recorded_fingerprint
from training.manifest import read_manifest, run_dir
from training.progress import EVAL_PROGRESS

# bump when what a metric means changes, so cached measurements are recomputed
EVAL_VERSION = 1
PREF_SETS = ("pref", "pref_clinician")


@dataclass
class Exam:
    demos: list[dict]
    items: list[dict]


@dataclass
class EvalSets:
    """The held-out sets of ``data/chimed/eval`` (capped by ``cfg.eval.*_max``), and their file hashes."""

    exams: dict[str, Exam]  # "" = the ChiMed exam; otherwise the user's exam file's name
    qa: list[dict]
    general: list[str]
    pref: dict[str, list[dict]]  # "pref" always, "pref_clinician" when there are clinician pairs
    hashes: dict[str, str] = field(default_factory=dict)
    safety: list[dict] = field(default_factory=list)  # eval/safety.jsonl (training/evaluation/safety.py)

    def sizes(self) -> dict:
        sizes = {("exam" if not name else f"exam_{name}"): len(e.items) for name, e in self.exams.items()}
        sizes.update(qa=len(self.qa), general=len(self.general), **{k: len(v) for k, v in self.pref.items()})
        if self.safety:
            sizes["safety"] = len(self.safety)
        return sizes


def evaluate_run(cfg: Config, run_id: str, compare: str | None = None) -> dict:
    """Evaluate every stage of ``run_id``, write the reports, and return the ``results.json`` payload."""
    run_path = run_dir(cfg, run_id)
    manifest = read_manifest(cfg, run_id)
    if compare:
        read_manifest(cfg, compare)  # a wrong id stops here, not after the whole evaluation
    stages = answering(s for s in stage_names() if s in manifest["stages"])
    if not stages:
        raise UserError(f"run {run_id} has no finished stage to evaluate: train it with ./launch.sh train-all")
    judge = reward.judge_run(cfg, run_id, manifest)  # a reward judge that is not there stops here
    sets = load_eval_sets(cfg)
    out_dir = run_path / "eval"

    results = {"run_id": run_id, "stages": {}, "settings": _settings(cfg, sets), "timing_s": {}}
    measured: dict[str, dict] = {}
    progress = out_dir / EVAL_PROGRESS  # what `status` and the Runs tab show while this runs
    for i, stage in enumerate(stages, 1):
        print(f"eval stage {i}/{len(stages)} {stage}", flush=True)
        write_json_atomic(progress, {"stage": stage, "done": i - 1, "total": len(stages)})
        started = time.time()
        measured[stage] = measure_stage_cached(cfg, run_path, manifest, stage, sets)
        reference = _reference_of(manifest, stage)
        if reference and reference not in measured:  # the reference is not part of this run's stages
            measured[reference] = measure_stage_cached(cfg, run_path, manifest, reference, sets)
        results["stages"][stage] = stage_metrics(measured, stage, reference, sets)
        # factual precision of the answers against CMeKG (training/evaluation/facts.py): read from the
        # generations, so cached stages get it without a model
        questions = [facts.last_question(r["messages"]) for r in sets.qa]
        generations = facts.annotate(facts.fact_checker(), measured[stage]["generations"], questions)
        results["stages"][stage].update(facts.fact_metrics(generations))
        # this call's wall time (loading included; near 0 when cached) and the parts of the measurement
        results["timing_s"][stage] = {
            "wall": round(time.time() - started, 2),
            "measured": measured[stage].get("seconds", {}),
        }
        write_jsonl_atomic(out_dir / "generations" / f"{stage}.jsonl", generations)
        if measured[stage].get("safety_answers"):  # the checker's verdicts, to audit (docs/safety.md)
            write_jsonl_atomic(out_dir / "generations" / f"safety_{stage}.jsonl", measured[stage]["safety_answers"])
    # the reward model: its own row (held-out pair accuracy) and, as a judge, the mean reward of the answers above
    started = time.time()
    rewards = reward.reward_metrics(
        cfg, run_path, manifest, judge, sets, {stage: measured[stage]["generations"] for stage in stages}
    )
    if rewards:
        for stage, metrics in rewards["stages"].items():
            results["stages"].setdefault(stage, {}).update(metrics)
        results["stages"] = {s: results["stages"][s] for s in stage_names() if s in results["stages"]}
        results["reward_judge"] = rewards["reward_judge"]
        results["timing_s"]["reward_model"] = {"wall": round(time.time() - started, 2)}

    previous = out_dir / "results.json"
    if previous.is_file():  # the clinicians' verdict is not measured here: keep it (see record_arena_comparison)
        arena = json.loads(previous.read_text(encoding="utf-8")).get("arena")
        if arena:
            results["arena"] = arena
    write_reports(cfg, run_path, manifest, results)
    progress.unlink(missing_ok=True)
    print(report.results_table(results), flush=True)
    print(f"evaluation written to {out_dir}", flush=True)
    if compare:
        compare_runs(cfg, results, compare)
    return results


# --- the eval sets --------------------------------------------------------------------------------


def load_eval_sets(cfg: Config) -> EvalSets:
    """Read ``data/chimed/eval/*.jsonl`` (and the user's exam files), capped by ``cfg.eval``."""
    folder = cfg.data_dir / "eval"
    needed = {name: folder / f"{name}.jsonl" for name in ("exam", "qa", "general", "pref")}
    missing = [str(p) for p in needed.values() if not p.is_file()]
    if missing:
        raise UserError(f"{missing[0]} is missing: build the eval sets with ./launch.sh build-data")
    e = cfg.eval
    hashes = {name: sha256_file(path) for name, path in needed.items()}
    exams = {"": _exam(read_exam(needed["exam"]), cfg)}
    for path in e.user_exam_files:
        path = Path(path).expanduser()
        exams[path.stem] = _exam(read_user_exam(path), cfg)
        hashes[f"exam:{path}"] = sha256_file(path)
    pref = {"pref": _cap(read_jsonl(needed["pref"]), e.pref_max)}
    clinician = folder / "pref_clinician.jsonl"
    if clinician.is_file() and clinician.stat().st_size:
        pref["pref_clinician"] = _cap(read_jsonl(clinician), e.pref_max)
        hashes["pref_clinician"] = sha256_file(clinician)
    safety_path = folder / "safety.jsonl"  # builds before the safety exam have none
    safety = _cap(read_exam(safety_path), e.exam_max) if safety_path.is_file() else []
    if safety:
        hashes["safety"] = sha256_file(safety_path)
    return EvalSets(
        safety=safety,
        exams=exams,
        qa=_cap(read_jsonl(needed["qa"]), e.qa_max),
        general=[r["text"] for r in _cap(read_jsonl(needed["general"]), e.general_max)],
        pref=pref,
        hashes=hashes,
    )


def read_user_exam(path: Path) -> list[dict]:
    """A real exam file: the ChiMed exam format as is, C-Eval / CMExam style through the builder's importer."""
    from training.data.importers import LineErrors, require_file
    from training.data.importers import read_exam as import_exam

    path = require_file(path, "eval.user_exam_files")
    with open(path, encoding="utf-8-sig") as fh:
        first = next((line for line in fh if line.strip()), "")
    try:
        is_chimed = path.suffix == ".jsonl" and "options" in json.loads(first)
    except json.JSONDecodeError:
        is_chimed = False
    items = read_exam(path) if is_chimed else import_exam(path, LineErrors(strict=False))
    if not items:
        raise UserError(f"eval.user_exam_files: {path} holds no usable exam question (C-Eval, CMExam or ChiMed format)")
    return items


def _exam(items: list[dict], cfg: Config) -> Exam:
    demos, scored = split_demonstrations(items, cfg.eval.k_shot, cfg.eval.seed)
    return Exam(demos, _cap(scored, cfg.eval.exam_max))


def _cap(items: list, limit: int) -> list:
    return items[:limit] if limit > 0 else items


def _settings(cfg: Config, sets: EvalSets) -> dict:
    return {
        "k_shot": cfg.eval.k_shot,
        "max_new_tokens": cfg.eval.max_new_tokens,
        "chat_stages": list(chat_stage_names()),
        "sets": sets.sizes(),
        "set_hashes": sets.hashes,
    }


# --- measuring one stage ----------------------------------------------------------------------------


def measure_stage_cached(cfg: Config, run_path: Path, manifest: dict, stage: str, sets: EvalSets) -> dict:
    """:func:`measure_stage`, or its cached result when nothing it depends on changed."""
    key = _cache_key(cfg, run_path, stage, sets)
    own = run_path / "eval" / "cache" / f"{stage}.json"
    if cfg.eval.use_cache and key:
        candidates = [own]
        if manifest.get("parent_run"):  # a stage reused from another run was measured there
            candidates.append(run_path.parent / manifest["parent_run"] / "eval" / "cache" / f"{stage}.json")
        for path in candidates:
            if path.is_file():
                cached = json.loads(path.read_text(encoding="utf-8"))
                if cached.get("key") == key:
                    print(f"{stage}: unchanged since its last evaluation, reusing it", flush=True)
                    if path != own:
                        write_json_atomic(own, cached)
                    return cached["measured"]
    from training.modeling import load_stage

    model, tokenizer = load_stage(run_path, stage)
    measured = measure_stage(cfg, model, tokenizer, stage, sets)
    del model
    if key:
        write_json_atomic(own, {"key": key, "measured": measured})
    return measured


def measure_stage(cfg: Config, model, tokenizer, stage: str, sets: EvalSets) -> dict:
    """Everything measured on one model: ``{"metrics", "pref_logprobs", "generations", "seconds"}``."""
    e = cfg.eval
    chat = is_chat_stage(stage)
    max_length = min(e.max_length, getattr(model.config, "max_position_embeddings", None) or e.max_length)
    metrics: dict = {}
    clock = _Clock()
    for name, exam in sets.exams.items():
        suffix = f"_{name}" if name else ""
        shots = score_exam(
            model,
            tokenizer,
            exam.items,
            exam.demos,
            chat,
            e.batch_size,
            max_length,
            desc=f"{stage} exam{suffix} {len(exam.demos)}-shot",
        )
        metrics.update(
            {f"exam_acc{suffix}": shots["acc"], f"exam_n{suffix}": shots["n"], f"exam_ci95{suffix}": shots["ci95"]}
        )
        if name:  # the user's exams: the k-shot figure only
            continue
        zero = score_exam(model, tokenizer, exam.items, [], chat, e.batch_size, max_length, desc=f"{stage} exam 0-shot")
        metrics.update(exam_acc_0shot=zero["acc"], exam_ci95_0shot=zero["ci95"])
        if e.score_by_letter:
            letter = score_exam(
                model,
                tokenizer,
                exam.items,
                exam.demos,
                chat,
                e.batch_size,
                max_length,
                by_letter=True,
                desc=f"{stage} exam letter",
            )
            metrics.update(exam_acc_letter=letter["acc"], exam_ci95_letter=letter["ci95"])
    clock.lap("exam")

    generations = qa_generations(
        model, tokenizer, sets.qa, chat, e.max_new_tokens, e.batch_size, max_length, desc=f"{stage} qa"
    )
    metrics.update(qa_metrics(generations))
    clock.lap("generation")
    safety, safety_answers = safety_metrics(
        model, tokenizer, sets.safety, chat, e.max_new_tokens, e.batch_size, max_length, stage
    )
    metrics.update(safety)
    clock.lap("safety")
    metrics["general_ppl"] = general_perplexity(
        model, tokenizer, sets.general, e.batch_size, max_length, desc=f"{stage} perplexity"
    )
    clock.lap("perplexity")
    pref_logprobs = {
        name: pair_logprobs(model, tokenizer, pairs, chat, e.batch_size, max_length, desc=f"{stage} {name}")
        for name, pairs in sets.pref.items()
    }
    clock.lap("preference")
    return {
        "metrics": metrics,
        "pref_logprobs": pref_logprobs,
        "generations": generations,
        "safety_answers": safety_answers,
        "seconds": clock.laps,
    }


class _Clock:
    """Seconds spent in each part of a stage's evaluation (reported in results.json ``timing_s``)."""

    def __init__(self) -> None:
        self.laps: dict[str, float] = {}
        self._last = time.perf_counter()

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(now - self._last, 2)
        self._last = now


def stage_metrics(measured: dict[str, dict], stage: str, reference: str | None, sets: EvalSets) -> dict:
    """The stage's results.json entry: its metrics plus preference accuracy on every held-out pair set."""
    metrics = dict(measured[stage]["metrics"])
    for name in PREF_SETS:
        key = "pref_acc" + name.removeprefix("pref")
        if name not in sets.pref:
            if name == "pref":
                metrics[key] = None
            continue
        own = measured[stage]["pref_logprobs"][name]
        metrics[f"{key}_likelihood"] = likelihood_accuracy(own)
        metrics[key] = (
            implicit_reward_accuracy(own, measured[reference]["pref_logprobs"][name])
            if reference
            else metrics[f"{key}_likelihood"]
        )
    return metrics


def _reference_of(manifest: dict, stage: str) -> str | None:
    return manifest["stages"][stage].get("parent") if get_stage(stage).preference else None


def _cache_key(cfg: Config, run_path: Path, stage: str, sets: EvalSets) -> str | None:
    """What a stage's measurements depend on; None (no caching) when the stage has no recorded fingerprint."""
    fingerprint = recorded_fingerprint(run_path, stage)
    if not fingerprint:
        return None
    # the reward judge scores the answers afterwards (training/evaluation/reward.py): no stage depends on it
    settings = {k: v for k, v in cfg.to_dict()["eval"].items() if k not in ("use_cache", "reward_judge")}
    payload = {
        "version": EVAL_VERSION,
        "stage": stage,
        "fingerprint": fingerprint,
        "settings": settings,
        "sets": sets.hashes,
    }
    return sha256_json(payload)


# --- reports ------------------------------------------------------------------------------------------


def write_reports(cfg: Config, run_path: Path, manifest: dict, results: dict) -> None:
    """results.json, results.md, stages.png and a model card in every stage directory."""
    out_dir = run_path / "eval"
    write_json_atomic(out_dir / "results.json", results)
    write_text_atomic(out_dir / "results.md", report.results_markdown(results))
    report.stages_chart(results, out_dir / "stages.png")
    config_path = run_path / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else cfg.to_dict()
    stats_path = cfg.data_dir / "stats.json"
    stats = json.loads(stats_path.read_text(encoding="utf-8")) if stats_path.is_file() else None
    for stage, metrics in results["stages"].items():
        card = report.model_card(results["run_id"], stage, manifest, metrics, config, stats, get_stage(stage).section)
        stage_dir = run_path / manifest["stages"][stage]["path"]
        # a linked base (paper profile) is the user's own model directory: its card stays in eval/
        target = out_dir / f"model_card_{stage}.md" if stage_dir.is_symlink() else stage_dir / "README.md"
        write_text_atomic(target, card)


def record_arena_comparison(cfg: Config, run_id: str, arena: dict) -> Path:
    """Put the clinicians' run-vs-run verdict (a plain dict from the preference store, with at least
    ``new_checkpoint``, ``old_checkpoint``, ``split``, ``as_of`` and a one-line ``summary``) into the run's
    results.json and results.md, with the stage's measured headline metrics of both runs (``arena["metrics"]``:
    fact_precision, safety_acc, unsafe_answer_share, those both results hold); an evaluation run later keeps it.
    Returns results.json's path."""
    out_dir = run_dir(cfg, run_id) / "eval"
    path = out_dir / "results.json"
    if not path.is_file():
        raise UserError(f"run {run_id} has no evaluation yet ({path} is missing): run ./launch.sh eval --run {run_id}")
    results = json.loads(path.read_text(encoding="utf-8"))
    # beside the verdict, the measured factual precision and safety of the same stage in both runs, when evaluated
    other = run_dir(cfg, arena["old_run"]) / "eval" / "results.json" if arena.get("old_run") else None
    if arena.get("stage") and other and other.is_file():
        arena["metrics"] = report.headline_deltas(
            results, json.loads(other.read_text(encoding="utf-8")), arena["stage"]
        )
        if arena["metrics"]:
            print(report.headline_markdown(arena["metrics"], run_id, arena["old_run"]), flush=True)
    results["arena"] = arena
    write_json_atomic(path, results)
    write_text_atomic(out_dir / "results.md", report.results_markdown(results))
    return path


def compare_runs(cfg: Config, results: dict, other_id: str) -> dict:
    """Deltas between this run's results and ``other_id``'s, both measured on the same eval sets: the other
    run is evaluated first when it has no results or was evaluated on other sets (e.g. before clinician
    pairs were held out), so that a delta never compares two different tests."""
    other_path = run_dir(cfg, other_id) / "eval" / "results.json"
    other = json.loads(other_path.read_text(encoding="utf-8")) if other_path.is_file() else None
    if other is None:
        print(f"run {other_id} has no evaluation yet: evaluating it first", flush=True)
        other = evaluate_run(cfg, other_id)
    elif other.get("settings", {}).get("set_hashes") != results["settings"]["set_hashes"]:
        print(f"run {other_id} was evaluated on other eval sets: evaluating it again on the current ones", flush=True)
        other = evaluate_run(cfg, other_id)
    deltas = report.compare_results(results, other)
    out_dir = run_dir(cfg, results["run_id"]) / "eval"
    write_json_atomic(out_dir / f"compare_{other_id}.json", deltas)
    table = report.compare_markdown(deltas)
    write_text_atomic(out_dir / f"compare_{other_id}.md", table)
    print(table, flush=True)
    return deltas
