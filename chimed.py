"""ChiMed Arena's command line and the loop's orchestration (``./launch.sh SUBCOMMAND`` runs
``python -m chimed SUBCOMMAND``): the top layer, the only module that uses training, the store and the app.

    chimed.py (command line, the loop: export judgments -> build -> train -> evaluate -> register)
        app/               (tabs, arena, serving)
            preference_store/  (schema, repository, ratings, export)
                training/          (config, stage registry, data builders, recipes, evaluation)

Every subcommand takes ``--profile tiny|demo|paper`` and ``section.key=value`` overrides and honours
``CHIMED_HOME``. Each one delegates to the module that owns the work; nothing here has defaults of its
own beyond the profile name.
"""

from __future__ import annotations

import argparse
import dataclasses
import getpass
import json
import re
import sys
from datetime import UTC, datetime
from pathlib import Path

from app.serving.plan import DEFAULT_HOST, DEFAULT_PORT, ENGINES, PLANNERS
from core.config import PROFILES, Config, load_config
from core.errors import UserError
from core.registry import ALIGN, answering, run_stages, stage_names
from preference_store.cli import (
    add_annotator,
    cli_actor,
    report_superseded,
    set_account_enabled,
    set_password,
    unlock_account,
)
from preference_store.exports.pairs import export_pairs, format_summary, loop_report
from preference_store.exports.ratings import export_ratings, format_ratings_summary
from preference_store.repository import PreferenceStore
from training.data.build import build_chimed, data_is_built
from training.manifest import interrupted_run, latest_run, new_run_id, read_manifest_at, read_run_state

# The modules that train, evaluate and serve import torch, transformers or gradio: each subcommand imports
# what it needs when it runs (they all point down; none of them imports this module).


# --- the loop ----------------------------------------------------------------------------------------


def train_and_register(cfg: Config, **options) -> str:
    """train-all within the loop: judgments not yet exported join ChiMed-DPO first (the data is rebuilt with
    them), then the run trains and is evaluated (:func:`training.pipeline.train_all`), and its checkpoints
    are registered with the store with the clinician pairs it trained on. Returns the run id."""
    from training.pipeline import release_run, train_all

    run_id = train_all(cfg, before_data=export_clinician_pairs, keep_in_training=True, **options)
    if not options.get("dry_run") and cfg.train.machine_rank == 0:
        try:  # "in training" until registered (training/progress.py)
            register_run(cfg, run_id)
        finally:
            release_run(cfg.runs_dir / run_id)
        parent = read_manifest_at(cfg.runs_dir / run_id).get("parent_run")
        if parent and (cfg.runs_dir / run_id / "eval" / "results.json").is_file():  # evaluated: report beside it
            try:
                report_run_comparison(cfg, run_id, parent, split="heldout")
            except UserError as err:  # e.g. runs ending in different stages: the run itself trained fine
                print(f"clinicians' verdict not recorded: {err}", flush=True)
    return run_id


def export_clinician_pairs(cfg: Config) -> None:
    """The loop: judgments not yet exported become a new file in the collected-pairs folder and single-answer
    ratings not yet exported a new file in the collected-ratings folder, so the data fingerprint changes and
    the data is rebuilt with them: the train pairs join ChiMed-DPO (held-out comparisons go to the eval set),
    the train ratings ChiMed-KTO (held-out ones stay out of training). Prints how many clinician pairs go into
    the round and, when none do although the store holds judgments, why (:func:`loop_report`)."""
    url = cfg.database_url
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        print("preferences: 0 clinician pairs go into this round: there is no preference store yet", flush=True)
        return
    with PreferenceStore.from_config(cfg) as store:
        summary = export_pairs(cfg, store=store)
        ratings = export_ratings(cfg, store=store)
        if summary.path is not None or ratings.path is not None:
            store.record_export_event("loop", summary, ratings)
        print(loop_report(summary, store), flush=True)
    if ratings.path is not None:
        print(
            f"preferences: exported {len(ratings.rating_ids)} new single-answer ratings as {ratings.records} "
            f"unpaired answers ({ratings.train} train, {ratings.heldout} held out) to {ratings.path}",
            flush=True,
        )


def register_run(cfg: Config, run_id: str) -> None:
    """The run's checkpoints become contestants of the store, which records the clinician pairs it trained on."""
    manifest = read_manifest_at(cfg.runs_dir / run_id)
    stages = answering(manifest["stages"])
    with PreferenceStore(cfg.database_url) as store:
        store.register_checkpoints(run_id, stages)
        consumed = store.mark_consumed(manifest.get("dpo_pair_ids", []), run_id)
    print(
        f"registered {', '.join(f'{run_id}/{s}' for s in stages)} in the preference store"
        + (f"; {consumed} clinician pairs marked as consumed by this run" if consumed else ""),
        flush=True,
    )


def report_run_comparison(
    cfg: Config, new_run: str, old_run: str, split: str | None = "heldout", stage: str | None = None
) -> dict:
    """The rule for whether a round of the loop helped: the clinicians' judgments of ``new_run`` against
    ``old_run`` on the shared bank prompts of ``split`` (held-out by default), decided as study.decisions says,
    written into the new run's results (results.json ``arena``, results.md) and printed. A new run has no
    judgments yet when it is trained; ``./launch.sh compare-runs`` brings the verdict up to date later."""
    from training.evaluation.evaluate import record_arena_comparison

    # the stages the new run took over from the old one (train-all --from): the same weights under new ids
    reused = read_run_state(cfg.runs_dir / new_run).get("reused", {})
    with PreferenceStore.from_config(cfg) as store:
        for run_id in (new_run, old_run):  # a run trained before this store was opened elsewhere is still known
            if (cfg.runs_dir / run_id / "manifest.json").is_file():
                store.register_checkpoints(run_id, answering(read_manifest_at(cfg.runs_dir / run_id)["stages"]))
        result = store.compare_runs(
            new_run,
            old_run,
            split=split,
            stage=stage,
            reused=frozenset(s for s, source in reused.items() if source == old_run),
        )
    how = (
        f"a confidence sequence valid at every judgment (study.decisions anytime, error rate {result.alpha:.0%}, "
        f"same within ±{result.margin:.2f} win rate)"
        if result.decisions == "anytime"
        else f"{result.rounds} bootstrap resamples (study.decisions fixed: one look at a preregistered study)"
    )
    print(f"comparing {result.new_checkpoint} (new) against {result.old_checkpoint} (old), {how}", flush=True)
    if result.trained_on:
        print(
            f"warning: {result.trained_on} of the {result.prompts} {split or 'train and held-out'} bank prompts "
            f"counted had clinician pairs {new_run} trained on: its wins there may be recall; the held-out "
            "split (--split heldout) is the fair test",
            file=sys.stderr,
            flush=True,
        )
    arena = dataclasses.asdict(result)
    arena.update(split=split or "all", as_of=datetime.now(UTC).isoformat(timespec="seconds"), summary=result.summary)
    path = record_arena_comparison(cfg, new_run, arena)
    print(f"clinicians, {arena['split']} bank prompts: {result.summary} (in {path})", flush=True)
    return arena


# --- subcommands -------------------------------------------------------------------------------------


def _build_data(cfg: Config, args) -> None:
    build_chimed(cfg, strict=args.strict or cfg.data.strict)


def _train_all(cfg: Config, args) -> None:
    stages = [s.strip() for s in args.stages.split(",")] if args.stages else None
    train_and_register(
        cfg,
        from_stage=args.from_stage,
        resume_run=args.resume_run,
        stages=stages,
        dry_run=args.dry_run,
        run_id=args.run_id,
    )


def _eval(cfg: Config, args) -> None:
    from training.evaluation.evaluate import evaluate_run

    evaluate_run(cfg, args.run, compare=args.compare)


def _app(cfg: Config, args) -> None:
    from app.main import launch_app

    launch_app(cfg, host=args.host or cfg.app.host, port=args.port or cfg.app.port, overrides=args.overrides)


def _serve(cfg: Config, args) -> None:
    from app.openai_server import serve_run

    serve_run(cfg, args.run, host=args.host or cfg.app.host, port=cfg.app.port if args.port is None else args.port)


def _serve_token(cfg: Config, args) -> None:
    with PreferenceStore.from_config(cfg) as store:
        if args.revoke:
            revoked = store.revoke_api_tokens(args.name, actor=cli_actor())
            print(f"revoked {revoked} API token(s) of {args.name}: `serve` refuses them from the next request on")
            return
        token = store.create_api_token(args.name, actor=cli_actor())
    print(f"a new API token for {args.name} (shown once, stored only as its hash): {token}")


def _demo(cfg: Config, args) -> None:
    """The bare ``./launch.sh``: without a completed run, build the data and start train-all in the background
    (its output in the run's train-all.log; an interrupted one is resumed), then the app at once, whose Runs tab
    shows the training live and whose arena gets each stage as it finishes. Ctrl-C stops both."""
    from training.background import running_training, start_training, stop_on_sigterm

    training = None
    stop_on_sigterm()
    if latest_run(cfg) is None:
        if not data_is_built(cfg):
            build_chimed(cfg, strict=cfg.data.strict)
        running = running_training(cfg)
        if running:
            print(f"run {running['run_id']} is training already (pid {running['pid']}): starting the app", flush=True)
        else:
            run_id = interrupted_run(cfg, list(run_stages(cfg))) or new_run_id(cfg)
            argv = ["train-all", "--profile", cfg.profile, "--run-id", run_id, *args.overrides]
            training = start_training(cfg, run_id, argv)
            print(
                f"training run {run_id} in the background (log: {training.log}; ./launch.sh status --profile "
                f"{cfg.profile}); the app starts now and shows each stage as it finishes",
                flush=True,
            )
    try:
        _app(cfg, args)
    finally:
        if training is not None:
            training.stop()


def _status(cfg: Config, args) -> None:
    """``status [--run ID]``: the live state of a run (default: the one in training, else the newest unfinished,
    else the newest)."""
    from training.progress import format_progress, run_progress, watched_run

    run_id = args.run or watched_run(cfg)
    if run_id is None:
        print(f"no run under {cfg.runs_dir} yet: ./launch.sh starts the demo run")
        return
    if not (cfg.runs_dir / run_id / "manifest.json").is_file():
        raise UserError(f"no run {run_id!r} under {cfg.runs_dir} (or it has not started training yet)")
    print(format_progress(run_progress(cfg, run_id)))


def next_round(cfg: Config, run_id: str | None = None, actor: str | None = None) -> str:
    """The loop's next round: the judgments not yet exported go in, the stages the plan retrains are trained
    from the newest completed run (the others reused), the run is evaluated and registered
    (:func:`train_and_register`), then a blind comparison round of its last stage against the parent's is queued
    on the held-out bank prompts. The app's "train the next round" runs this command (app/loop.py)."""
    from app.loop import round_plan
    from app.rounds import start_study_round

    with PreferenceStore.from_config(cfg) as store:
        plan = round_plan(cfg, store)
    print(plan.summary(), flush=True)
    new = train_and_register(cfg, from_stage=plan.from_stage, resume_run=plan.parent_run, run_id=run_id)
    contestants = [f"{new}/{plan.compare_stage}", f"{plan.parent_run}/{plan.compare_stage}"]
    with PreferenceStore.from_config(cfg) as store:
        try:
            print(start_study_round(cfg, store, None, actor or cli_actor(), contestants, split="heldout", blind=True))
        except UserError as err:  # e.g. no bank of held-out prompts: the run itself trained fine
            print(f"no comparison round queued: {err}", flush=True)
    return new


def _next_round(cfg: Config, args) -> None:
    next_round(cfg, run_id=args.run_id, actor=args.actor)


def _read_password(name: str) -> str:
    if sys.stdin.isatty():
        return getpass.getpass(f"password for {name}: ")
    return sys.stdin.readline().rstrip("\n")


def _add_annotator(cfg: Config, args) -> None:
    if args.disable or args.enable:
        set_account_enabled(cfg, args.name, enabled=args.enable)
        return
    add_annotator(cfg, args.name, role=args.role, password=_read_password(args.name))


def _passwd(cfg: Config, args) -> None:
    set_password(cfg, args.name, _read_password(args.name))


def _unlock(cfg: Config, args) -> None:
    unlock_account(cfg, args.name)


def _export_prefs(cfg: Config, args) -> None:
    """Into the folders the loop reads (marked as exported), or with ``--out`` for inspection: the pairs to FILE
    and the ratings beside it, marked only with ``--for-training`` so that an inspection never starves a round."""
    if args.for_training and not args.out:
        raise UserError("--for-training goes with --out FILE (export-prefs without --out always feeds the loop)")
    mark = args.out is None or args.for_training
    ratings_out = Path(args.out).with_suffix(".ratings.jsonl") if args.out else None
    with PreferenceStore.from_config(cfg) as store:
        pairs = export_pairs(cfg, out=args.out, since=args.since, store=store, mark=mark)
        ratings = export_ratings(cfg, out=ratings_out, since=args.since, store=store, mark=mark)
        store.record_export_event(cli_actor(), pairs, ratings)
    print(format_summary(pairs))
    print(format_ratings_summary(ratings))


def _import_bank(cfg: Config, args) -> None:
    with PreferenceStore.from_config(cfg) as store:
        summary = store.import_bank(args.file, bank=args.bank)
        store.record_event(
            "bank.imported",
            actor=cli_actor(),
            target=summary.bank,
            detail={
                "file": str(args.file),
                "imported": summary.imported,
                "duplicates": summary.duplicates,
                "errors": len(summary.errors),
            },
        )
    print(
        f"prompt bank {summary.bank!r}: imported {summary.imported} prompts, {summary.duplicates} duplicates "
        f"imported once" + (f", {len(summary.errors)} malformed lines left out:" if summary.errors else "")
    )
    for error in summary.errors:
        print(f"  {error}")


def _queue_round(cfg: Config, args) -> None:
    from app.rounds import close_study_round, start_study_round

    with PreferenceStore.from_config(cfg) as store:
        if args.close:
            print(close_study_round(store, None, cli_actor()))
            return
        print(
            start_study_round(
                cfg, store, None, cli_actor(), (args.contestants or "").split(","), split=args.split, blind=args.blind
            )
        )


def _compare_runs(cfg: Config, args) -> None:
    report_run_comparison(
        cfg, args.run, args.against, split=None if args.split == "all" else args.split, stage=args.stage
    )


def _study(cfg: Config, args) -> None:
    """``study status | leaderboard | agreement [--json]``: the Leaderboard tab's figures (the same store calls)."""
    from preference_store import study_figures as figures

    with PreferenceStore.from_config(cfg) as store:
        if args.view == "status":
            data, text = figures.status_figures(store), figures.format_status
        else:
            board = store.leaderboard(bank_only=args.bank_only)
            data, text = (
                (figures.leaderboard_figures(board, cfg.store.bootstrap_rounds), figures.format_leaderboard)
                if args.view == "leaderboard"
                else (figures.agreement_figures(board, store.annotator_reliability()), figures.format_agreement)
            )
    print(json.dumps(data, ensure_ascii=False, indent=2) if args.json else text(data))


def _export_judgments(cfg: Config, args) -> None:
    from preference_store.exports.judgments import export_judgments, format_judgments_summary

    print(format_judgments_summary(export_judgments(cfg, args.out, actor=cli_actor())))


def _export(cfg: Config, args) -> None:
    from training.export.checkpoints import export_stage

    done = export_stage(cfg, args.run, args.stage, args.out, dtype=args.dtype, force=args.force)
    info = done.provenance
    print(
        f"exported {info['run_id']}/{info['stage']} to {done.out}: {done.size_bytes / 1e6:.1f} MB, "
        f"{info['parameters']:,} parameters, {info['dtype']}"
    )


def _export_lm_eval_task(cfg: Config, args) -> None:
    from training.export.lm_eval_task import export_lm_eval_task, format_export

    print(format_export(export_lm_eval_task(cfg, args.run, args.out, force=args.force)))


def _serve_plan(cfg: Config, args) -> None:
    plan = PLANNERS[args.engine](
        cfg,
        args.run,
        host=args.host,
        port=args.port,
        tensor_parallel=args.tensor_parallel,
        gpus=args.gpus,
        export_dir=args.export_dir,
        api_key_env=args.api_key_env,
    )
    print(plan.render(cfg), end="")


def _import_model(cfg: Config, args) -> None:
    from training.model_import import convert_checkpoint

    record = convert_checkpoint(args.src, args.out, force=args.force)
    print(
        f"imported {record['source_layout']} checkpoint {record['source_path']} as "
        f"{record['target_architecture']} in {args.out} (source sha256 {record['source_sha256']})"
    )


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--profile",
        choices=PROFILES,
        default="demo",
        help="config profile (core/configs/PROFILE.yaml); default demo",
    )

    parser = argparse.ArgumentParser(
        prog="./launch.sh",
        description="ChiMed Arena: Qilin-Med CPT -> SFT -> DPO on ChiMed, with a clinician preference loop. "
        "Research and education only; nothing it outputs is medical advice.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="SUBCOMMAND")

    p = sub.add_parser("demo", parents=[common], help="build demo data and train the demo run if none, start the app")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_demo)

    p = sub.add_parser(
        "status", parents=[common], help="a run's live state: stage in training, steps, loss, finished stages, errors"
    )
    p.add_argument("--run", help="run id (default: the run in training, else the newest unfinished or completed)")
    p.set_defaults(func=_status)

    p = sub.add_parser(
        "next-round",
        parents=[common],
        help="the loop's next round: new judgments in, retrain what changed, evaluate, register, queue the comparison",
    )
    p.add_argument("--run-id", help="name of the new run (default: a timestamp)")
    p.add_argument("--actor", help="who starts it, for the audit log (default: the command line's user)")
    p.set_defaults(func=_next_round)

    p = sub.add_parser(
        "build-data", parents=[common], help="build ChiMed-CPT/SFT/DPO/eval into $CHIMED_HOME/data/chimed"
    )
    p.add_argument("--strict", action="store_true", help="stop at the first malformed input line")
    p.set_defaults(func=_build_data)

    p = sub.add_parser("train-all", parents=[common], help="run base -> cpt -> sft -> dpo, evaluate, register the run")
    p.add_argument(
        "--from",
        dest="from_stage",
        choices=(*stage_names(), ALIGN),
        help="first stage to train (needs --resume-run); align: the stage of align.method",
    )
    p.add_argument("--resume-run", help="earlier run whose stages before --from are reused")
    p.add_argument("--stages", help="comma-separated subset of stages to run")
    p.add_argument("--run-id", help="name of the run (default: a timestamp); rerun the same id to resume it")
    p.add_argument("--dry-run", action="store_true", help="print the resolved config and launch command, train nothing")
    p.set_defaults(func=_train_all)

    p = sub.add_parser("eval", parents=[common], help="evaluate every stage of a run")
    p.add_argument("--run", required=True, help="run id under $CHIMED_HOME/runs")
    p.add_argument("--compare", help="second run id: also write a table of deltas")
    p.set_defaults(func=_eval)

    p = sub.add_parser("app", parents=[common], help="start the Gradio arena app")
    p.add_argument("--host")
    p.add_argument("--port", type=int)
    p.set_defaults(func=_app)

    p = sub.add_parser(
        "serve", parents=[common], help="serve a run's stages over the OpenAI API (/v1/models, /v1/chat/completions)"
    )
    p.add_argument("--run", required=True, help="run id under $CHIMED_HOME/runs; its stages are the models")
    p.add_argument("--host", help="default app.host")
    p.add_argument(
        "--port", type=int, help="default app.port; 0 = any free port (the line 'serving N models at URL' says which)"
    )
    p.set_defaults(func=_serve)

    p = sub.add_parser(
        "serve-token", parents=[common], help="a new bearer token for an annotator account, for `serve` (printed once)"
    )
    p.add_argument("name", help="the annotator account (./launch.sh add-annotator NAME)")
    p.add_argument("--revoke", action="store_true", help="delete every token of NAME instead (a leaked token)")
    p.set_defaults(func=_serve_token)

    p = sub.add_parser("add-annotator", parents=[common], help="create an annotator account (password from stdin)")
    p.add_argument("name")
    p.add_argument("--role", choices=("annotator", "admin"), default="annotator")
    toggle = p.add_mutually_exclusive_group()
    toggle.add_argument(
        "--disable",
        action="store_true",
        help="disable NAME instead: its sessions and tokens stop at their next request",
    )
    toggle.add_argument("--enable", action="store_true", help="enable a disabled NAME again")
    p.set_defaults(func=_add_annotator)

    p = sub.add_parser("passwd", parents=[common], help="set an account's password (from stdin; the policy applies)")
    p.add_argument("name")
    p.set_defaults(func=_passwd)

    p = sub.add_parser("unlock", parents=[common], help="unlock an account locked by failed logins")
    p.add_argument("name")
    p.set_defaults(func=_unlock)

    p = sub.add_parser("export-prefs", parents=[common], help="export de-identified preference pairs as dpo.jsonl")
    p.add_argument("--out", help="output file (default: a new file in the collected-pairs folder)")
    p.add_argument("--since", help="only judgments at or after this ISO-8601 time")
    p.add_argument(
        "--for-training",
        action="store_true",
        help="with --out: mark what FILE holds as exported, so train-all leaves it out (default: an "
        "export to FILE is for inspection and the next train-all still trains on it)",
    )
    p.set_defaults(func=_export_prefs)

    p = sub.add_parser(
        "import-bank",
        parents=[common],
        help="import a bank of clinical prompts (jsonl/csv) that annotators work through in their queues",
    )
    p.add_argument("file", help="jsonl or csv: prompt, optional history (conversation so far), tags, split")
    p.add_argument("--bank", help="the bank's name (default: the file's name without extension)")
    p.set_defaults(func=_import_bank)

    p = sub.add_parser(
        "queue-round",
        parents=[common],
        help="start a new queue round: every annotator gets the bank prompts again (e.g. for a new run)",
    )
    p.add_argument(
        "--contestants",
        help="RUN/STAGE,RUN/STAGE[,...]: 2-4 checkpoints that answer every queue "
        "prompt of the round for everyone (default: each annotator chooses)",
    )
    p.add_argument(
        "--split",
        choices=("heldout", "train", "all"),
        default="all",
        help="which bank prompts the round hands out (default all)",
    )
    p.add_argument("--blind", action="store_true", help="nobody, admins included, judges the round with names shown")
    p.add_argument(
        "--close",
        action="store_true",
        help="close the open round instead (its results may then be shown to annotators, study.interim_results)",
    )
    p.set_defaults(func=_queue_round)

    p = sub.add_parser(
        "judgment-duplicates",
        parents=[common],
        help="list the judgments and ratings kept as history: second votes resolved when the store "
        "was migrated (the latest counts) and revisions",
    )
    p.set_defaults(func=lambda cfg, args: report_superseded(cfg))

    p = sub.add_parser(
        "compare-runs", parents=[common], help="clinicians' verdict on a run against another on the shared bank prompts"
    )
    p.add_argument("--run", required=True, help="the newer run")
    p.add_argument("--against", required=True, help="the run it should beat (e.g. its parent)")
    p.add_argument(
        "--split",
        choices=("heldout", "train", "all"),
        default="heldout",
        help="which bank prompts count (default heldout)",
    )
    p.add_argument(
        "--stage",
        help="stage to compare (default: the last stage, when both runs end in the same "
        "one; a stage the new run only reused from the other is refused)",
    )
    p.set_defaults(func=_compare_runs)

    p = sub.add_parser("study", help="the study's figures: who has finished what, the leaderboard, the agreement")
    views = p.add_subparsers(dest="view", required=True, metavar="VIEW")
    for view, what in (
        ("status", "each annotator's queue progress in the current round and their judgments"),
        ("leaderboard", "Bradley-Terry ratings with 95%% intervals (overall, length-controlled, per criterion)"),
        ("agreement", "Krippendorff's alpha overall and per annotator, outliers, position bias"),
    ):
        v = views.add_parser(view, parents=[common], help=what)
        v.add_argument("--json", action="store_true", help="print the figures as JSON")
        if view != "status":
            v.add_argument("--bank-only", action="store_true", help="only comparisons on bank prompts")
        v.set_defaults(func=_study, bank_only=False)

    p = sub.add_parser(
        "export-judgments",
        parents=[common],
        help="every judgment, rating and score as one de-identified table (CSV, or Parquet)",
    )
    p.add_argument("--out", required=True, help="FILE.csv or FILE.parquet (refused if it exists)")
    p.set_defaults(func=_export_judgments)

    p = sub.add_parser("export", parents=[common], help="write a stage of a run as one merged Hugging Face checkpoint")
    p.add_argument("--run", required=True, help="run id under $CHIMED_HOME/runs")
    p.add_argument("--stage", required=True, help="base, cpt, sft or dpo")
    p.add_argument("--out", required=True, help="directory to create (refused if it exists, unless --force)")
    p.add_argument("--dtype", help="float32, bfloat16 or float16 (default: the dtype the app serves in here)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_export)

    p = sub.add_parser(
        "export-lm-eval-task",
        parents=[common],
        help="write the run's exam as lm-eval multiple-choice tasks (YAML + jsonl), prompted as eval scores it",
    )
    p.add_argument("--run", required=True, help="run id under $CHIMED_HOME/runs")
    p.add_argument("--out", required=True, help="directory to create (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_export_lm_eval_task)

    p = sub.add_parser(
        "serve-plan",
        parents=[common],
        help="print the commands that serve a run's stages on vLLM, and the app.endpoints entries",
    )
    p.add_argument("--run", required=True, help="run id under $CHIMED_HOME/runs")
    p.add_argument("--engine", choices=ENGINES, default=ENGINES[0], help=f"inference engine (default {ENGINES[0]})")
    p.add_argument("--host", help=f"address the servers listen on and the arena reaches (default {DEFAULT_HOST})")
    p.add_argument("--port", type=int, help=f"first server's port, the others take the next (default {DEFAULT_PORT})")
    p.add_argument("--tensor-parallel", type=int, default=1, help="GPUs per server (default 1)")
    p.add_argument(
        "--gpus", type=int, help="GPUs on the machine (default: enough for a set per server); fewer: servers share them"
    )
    p.add_argument("--export-dir", help="where the exports go (default $CHIMED_HOME/exports/RUN)")
    p.add_argument(
        "--api-key-env", default="", help="environment variable holding the key the servers require (default: none)"
    )
    p.set_defaults(func=_serve_plan)

    p = sub.add_parser(
        "import-model",
        parents=[common],
        help="convert a Baichuan-7B / Baichuan2-7B checkpoint into a native LLaMA checkpoint",
    )
    p.add_argument("src", help="directory of the published checkpoint")
    p.add_argument("--out", required=True, help="directory to create (refused if it exists, unless --force)")
    p.add_argument("--force", action="store_true", help="replace --out if it exists")
    p.set_defaults(func=_import_model)
    return parser


OVERRIDE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)+=")


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # `section.key=value` may stand anywhere on the line; everything else is argparse's
    overrides = [a for a in argv if OVERRIDE.match(a)]
    parser = build_parser()
    parser.epilog = "Any config key can be overridden as section.key=value, e.g. cpt.learning_rate=1e-4."
    args = parser.parse_args([a for a in argv if not OVERRIDE.match(a)])
    args.overrides = overrides  # what a training started in the background gets too
    try:
        cfg = load_config(args.profile, overrides)
        args.func(cfg, args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
