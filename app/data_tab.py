"""The Data tab: what the store holds, the newest preference pairs, and for admins the export that
``./launch.sh export-prefs`` does (de-identified pairs into the collected-pairs folder)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import gradio as gr

from app.arena import ArenaSession
from preference_store.export import export_pairs, format_summary
from preference_store.repository import PreferenceStore
from training.config import Config
from training.errors import UserError

PAIR_COLUMNS = ["时间 time", "问题 prompt", "优选 chosen", "较差 rejected", "优选来源 chosen from", "较差来源 rejected from",
                "优选服务方式 chosen served", "较差服务方式 rejected served"]
EXCERPT = 120
NOT_RECORDED = "—"


def _excerpt(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= EXCERPT else text[:EXCERPT] + "…"


def serving_label(serving: dict | None) -> str:
    """How an answer was served, in a few words: "exact", "delta 8-bit" (the parent plus an 8-bit
    difference), or "—" for a clinician's correction or an answer stored before this was recorded."""
    mode = (serving or {}).get("mode")
    if mode == "delta" and serving.get("bits"):
        return f"delta {serving['bits']}-bit"
    return str(mode) if mode else NOT_RECORDED


def counts_markdown(store: PreferenceStore) -> str:
    c = store.counts()
    kinds = ", ".join(f"{k} {v}" for k, v in c.judgments_by_kind.items())
    return (f"| 标注者 annotators | 检查点 checkpoints | 对话 conversations | 比较 comparisons | 评判 judgments "
            f"| 偏好对 pairs | 已导出 exported | 已用于训练 trained on |\n|---|---|---|---|---|---|---|---|\n"
            f"| {c.annotators} | {c.checkpoints} | {c.conversations} | {c.comparisons} | {c.judgments} ({kinds}) "
            f"| {c.pairs} | {c.exported_pairs} | {c.consumed_pairs} |")


def recent_pairs_table(store: PreferenceStore, limit: int) -> list[list]:
    """The newest pairs, newest first, texts shortened (the Dataframe shows them as plain text)."""
    rows = []
    for pair in store.recent_pairs(limit):
        prompt = next((m["content"] for m in reversed(pair.prompt) if m["role"] == "user"), "")
        rows.append([pair.created.strftime("%Y-%m-%d %H:%M"), _excerpt(prompt), _excerpt(pair.chosen),
                     _excerpt(pair.rejected), pair.chosen_checkpoint or "改写 clinician correction",
                     pair.rejected_checkpoint,
                     serving_label(pair.chosen_serving), serving_label(pair.rejected_serving)])
    return rows


def data_view(cfg: Config, store: PreferenceStore) -> list:
    return [counts_markdown(store), gr.update(value=recent_pairs_table(store, cfg.app.recent_pairs),
                                              headers=PAIR_COLUMNS)]


def export_for_admin(cfg: Config, store: PreferenceStore, session: ArenaSession) -> tuple[str, str | None]:
    """Export the pairs not yet exported (admins only); returns the summary and a downloadable copy."""
    if session.annotator is None or not session.annotator.is_admin:
        raise UserError("only admins can export: log in with an admin account "
                        "(./launch.sh add-annotator NAME --role admin)")
    summary = export_pairs(cfg, store=store)
    if summary.path is None:
        return "没有新的偏好对可导出 / nothing new to export", None
    # Gradio serves files from its temp folder only: hand it a copy, the export itself stays in place
    copy = Path(tempfile.mkdtemp(prefix="chimed-export-")) / summary.path.name
    shutil.copyfile(summary.path, copy)
    return "✓ " + format_summary(summary).replace("\n", "  \n"), str(copy)


def build_data_tab(cfg: Config, store: PreferenceStore, session: gr.State, tab: gr.Tab) -> gr.Group:
    """Lay out the Data tab; returns the admin-only export group (shown for admins at page load)."""
    refresh = gr.Button("刷新 Refresh", elem_id="refresh-data")
    counts = gr.Markdown(elem_id="data-counts")
    gr.Markdown(f"#### 最新偏好对 Most recent pairs (up to {cfg.app.recent_pairs})")
    pairs = gr.Dataframe(headers=PAIR_COLUMNS, interactive=False, wrap=True, elem_id="recent-pairs")
    with gr.Group(visible=False) as admin:
        gr.Markdown("#### 导出 Export (admins): 与 `./launch.sh export-prefs` 相同 — de-identified pairs into "
                    f"`{cfg.collected_pairs_dir}`, which the next `train-all` merges into ChiMed-DPO")
        export = gr.Button("导出偏好对 Export pairs", elem_id="export")
        export_status = gr.Markdown(elem_id="export-status")
        export_file = gr.File(label="导出文件 exported file", interactive=False)

    def run_export(state: ArenaSession):
        try:
            message, path = export_for_admin(cfg, store, state)
        except UserError as err:
            return f"⚠ {err}", None, *data_view(cfg, store)
        return message, path, *data_view(cfg, store)

    outputs = [counts, pairs]
    refresh.click(lambda: data_view(cfg, store), None, outputs)
    tab.select(lambda: data_view(cfg, store), None, outputs)
    export.click(run_export, [session], [export_status, export_file, *outputs])
    return admin
