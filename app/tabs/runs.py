"""The Runs tab: the run in training, live (stage, step counter, remaining time, the loss curve so far, finished
stages, the evaluation's progress, a failed stage's error: :mod:`training.progress`, refreshed by a timer), for
admins "train the next round" (:mod:`app.loop`), and each completed run's evaluation table
(``eval/results.md``), stage chart (``eval/stages.png``) and what its manifest says (stages, parent run, DPO
pairs)."""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr
import pandas as pd
from PIL import Image

from app.arena import ArenaSession
from app.contestants import RunInfo, completed_runs, stage_label
from app.loop import ADMINS_ONLY, round_plan, start_next_round
from core.config import Config
from core.errors import UserError
from preference_store.repository import PreferenceStore
from training.manifest import read_manifest
from training.progress import format_progress, live_run, run_progress

LIVE_REFRESH_S = 2.0  # how often an open Runs tab re-reads the run in training


def run_summary(cfg: Config, run: RunInfo) -> str:
    """A few lines from the manifest: when, which profile, stages, parent run, collected pairs used."""
    manifest = read_manifest(cfg, run.run_id)
    stages = ", ".join(
        f"{stage_label(s)} ({manifest['stages'][s]['kind']}"
        + (f" on {stage_label(manifest['stages'][s]['parent'])})" if manifest["stages"][s].get("parent") else ")")
        for s in run.stages
    )
    collected = sum(1 for pid in manifest.get("dpo_pair_ids", []) if str(pid).startswith("clin-"))
    parent = html.escape(run.parent_run) if run.parent_run else "—"
    return (
        f"**{html.escape(run.run_id)}** · profile `{run.profile}` · created {run.created}  \n"
        f"阶段 stages: {stages}  \n上一个运行 parent run: {parent} · "
        f"DPO 偏好对 pairs: {len(manifest.get('dpo_pair_ids', []))} (其中临床 collected from clinicians: {collected})"
    )


def run_view(cfg: Config, run_id: str | None) -> list:
    """Summary, evaluation table and chart of one run (with a note for what is not there yet)."""
    run = next((r for r in completed_runs(cfg) if r.run_id == run_id), None)
    if run is None:
        return ["还没有训练好的运行 / no completed run: train one with `./launch.sh train-all`", "", None]
    results = run.run_dir / "eval" / "results.md"
    chart = run.run_dir / "eval" / "stages.png"
    table = (
        results.read_text(encoding="utf-8")
        if results.is_file()
        else f"没有评估结果 / no evaluation yet: `./launch.sh eval --run {run.run_id}`"
    )
    image = Image.open(chart).convert("RGB") if chart.is_file() else None
    return [run_summary(cfg, run), table, image]


def runs_choices(cfg: Config, current: str | None = None):
    runs = [r.run_id for r in completed_runs(cfg)]
    return gr.update(choices=runs, value=current if current in runs else (runs[0] if runs else None))


def live_view(cfg: Config, run_id: str | None = None) -> list:
    """The live block's text and loss curve: of ``run_id`` if given (the round an admin just started), else
    of the run in training (or the newest unfinished one); hidden when there is none."""
    run_id = run_id or live_run(cfg)
    if run_id is None or not (cfg.runs_dir / run_id / "manifest.json").is_file():
        return [gr.update(value="", visible=False), gr.update(value=None, visible=False)]
    progress = run_progress(cfg, run_id)
    text = "#### 训练进度 Run in training\n\n" + format_progress(progress).replace("\n", "  \n")
    if progress.error:
        text = text.replace(f"error: {progress.error}", f"**⚠ error: {html.escape(progress.error)}**")
    stage = progress.current
    curve = (
        pd.DataFrame({"step": list(stage.loss), "loss": list(stage.loss.values())})
        if stage is not None and stage.loss
        else None
    )
    return [
        gr.update(value=text, visible=True),
        gr.update(value=curve, visible=curve is not None, label=f"{stage.stage} loss" if stage else "loss"),
    ]


@dataclass
class RunsTab:
    admin: gr.Group  # "train the next round": shown for admins at page load


def build_runs_tab(
    cfg: Config, tab: gr.Tab, session: gr.State, store: PreferenceStore, overrides: list[str] | None = None
) -> RunsTab:
    """Lay out the Runs tab; the run list is re-read whenever the tab is opened or refreshed, the live block
    every LIVE_REFRESH_S seconds. ``overrides``: the app's own config overrides, which a round it starts gets."""
    live = gr.Markdown(visible=False, elem_id="run-live")
    loss = gr.LinePlot(x="step", y="loss", visible=False, height=220, elem_id="run-live-loss")
    watched = gr.State(None)  # the round this browser started: its live view, also once it completes
    timer = gr.Timer(LIVE_REFRESH_S)
    with gr.Group(visible=False) as admin:
        gr.Markdown(
            "#### 训练下一轮 Train the next round (admins): the new judgments go into a new run from the newest "
            "completed one (its unchanged stages reused), which is evaluated, registered and judged against it in "
            "a blind comparison round on the held-out bank prompts (`./launch.sh next-round`)"
        )
        with gr.Row():
            preview = gr.Button("预览 Preview", elem_id="preview-next-round")
            start = gr.Button("开始训练 Train the next round", variant="primary", elem_id="train-next-round")
        round_status = gr.Markdown(elem_id="next-round-status")
    with gr.Row():
        run = gr.Dropdown(label="训练运行 Run", choices=[], scale=3, elem_id="runs-run")
        refresh = gr.Button("刷新 Refresh", scale=0, elem_id="refresh-runs-tab")
    summary = gr.Markdown(elem_id="run-summary")
    table = gr.Markdown(elem_id="run-results")
    chart = gr.Image(label="各阶段指标 Metrics by stage", type="pil", interactive=False, elem_id="run-chart")

    def reload(current, watched_run):
        choice = runs_choices(cfg, current)
        return [choice, *run_view(cfg, choice["value"]), *live_view(cfg, watched_run)]

    def show_plan(state: ArenaSession) -> str:
        try:
            if state.annotator is None or not state.annotator.is_admin:
                raise UserError(ADMINS_ONLY)
            return round_plan(cfg, store).summary()
        except UserError as err:
            return f"⚠ {html.escape(str(err))}"

    def train(state: ArenaSession, watched_run):
        try:
            training, plan = start_next_round(cfg, store, state.annotator, list(overrides or []))
        except UserError as err:
            return [f"⚠ {html.escape(str(err))}", watched_run, *live_view(cfg, watched_run)]
        return [
            f"run {training.run_id} started: {html.escape(plan.summary().replace('NEW/', f'{training.run_id}/'))}",
            training.run_id,
            *live_view(cfg, training.run_id),
        ]

    outputs = [run, summary, table, chart, live, loss]
    refresh.click(reload, [run, watched], outputs)
    tab.select(reload, [run, watched], outputs)
    timer.tick(lambda watched_run: live_view(cfg, watched_run), [watched], [live, loss], show_progress="hidden")
    run.input(lambda run_id: run_view(cfg, run_id), [run], [summary, table, chart])
    preview.click(show_plan, [session], [round_status])
    start.click(train, [session, watched], [round_status, watched, live, loss])
    return RunsTab(admin)
