"""The Runs tab: each completed run's evaluation table (``eval/results.md``), stage chart
(``eval/stages.png``) and what its manifest says (stages, parent run, DPO pairs)."""

from __future__ import annotations

import html

import gradio as gr
from PIL import Image

from app.contestants import RunInfo, completed_runs, stage_label
from core.config import Config
from training.manifest import read_manifest


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


def build_runs_tab(cfg: Config, tab: gr.Tab) -> None:
    """Lay out the Runs tab; the run list is re-read whenever the tab is opened or refreshed."""
    with gr.Row():
        run = gr.Dropdown(label="训练运行 Run", choices=[], scale=3, elem_id="runs-run")
        refresh = gr.Button("刷新 Refresh", scale=0, elem_id="refresh-runs-tab")
    summary = gr.Markdown(elem_id="run-summary")
    table = gr.Markdown(elem_id="run-results")
    chart = gr.Image(label="各阶段指标 Metrics by stage", type="pil", interactive=False, elem_id="run-chart")

    def reload(current):
        choice = runs_choices(cfg, current)
        return [choice, *run_view(cfg, choice["value"])]

    outputs = [run, summary, table, chart]
    refresh.click(reload, [run], outputs)
    tab.select(reload, [run], outputs)
    run.input(lambda run_id: run_view(cfg, run_id), [run], [summary, table, chart])
