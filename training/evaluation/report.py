"""What the evaluation writes for people: the paper-style table (``results.md``), the stage chart
(``stages.png``), a model card in every stage directory and the deltas between two runs."""

from __future__ import annotations

import json
from pathlib import Path

from core.registry import get_stage

NOTICE = (
    "**Research and education only.** These models and their outputs are not medical advice and must "
    "not be used for diagnosis or treatment."
)

# (results key, column label); fractions are shown as percentages, perplexity as is
COLUMNS = [
    ("exam_acc", "exam acc"),
    ("exam_ci95", "95% CI"),
    ("exam_acc_0shot", "exam 0-shot"),
    ("exam_acc_letter", "exam letter"),
    ("bleu1", "BLEU-1"),
    ("bleu2", "BLEU-2"),
    ("bleu4", "BLEU-4"),
    ("rouge1", "ROUGE-1"),
    ("rouge2", "ROUGE-2"),
    ("rougeL", "ROUGE-L"),
    ("distinct2", "distinct-2"),
    ("fact_precision", "fact prec"),
    ("fact_precision_ci95", "fact 95% CI"),
    ("fact_confirmed_share", "confirmed"),
    ("fact_contradicted_share", "contradicted"),
    ("fact_uncheckable_share", "uncheckable"),
    ("fact_claims_n", "claims"),
    ("general_ppl", "general PPL"),
    ("pref_acc", "pref acc"),
    ("pref_acc_clinician", "pref acc (clinician)"),
    ("reward_judge_mean", "RM score"),
    ("safety_acc", "safety acc"),  # training/evaluation/safety.py
    ("safety_ci95", "safety 95% CI"),
    ("unsafe_answer_share", "unsafe answers"),
    ("unsafe_answer_ci95", "unsafe 95% CI"),
]
NOT_FRACTIONS = {
    "general_ppl",
    "exam_n",
    "reward_judge_mean",
    "fact_claims_n",
    "fact_checkable_n",
    "fact_answers_with_claims",
}
CHART_METRICS = [
    "exam_acc",
    "exam_acc_0shot",
    "bleu1",
    "rouge1",
    "rougeL",
    "distinct2",
    "fact_precision",
    "safety_acc",
    "unsafe_answer_share",
    "pref_acc",
    "pref_acc_clinician",
]
FACT_NOTE = (
    "- fact prec: of the claims (entity, relation, value) those answers make that CMeKG can check, the share it "
    "confirms (95% Wilson interval); confirmed / contradicted (the value is CMeKG's for another entity) / "
    'uncheckable: shares of all claims; claims: their number (docs/evaluation.md, "Factual precision").'
)
# the chart's error bars: metric -> its 95% interval's key
CHART_INTERVALS = {"exam_acc": "exam_ci95", "fact_precision": "fact_precision_ci95"}
# what says whether a stage's answers are right and safe, beside the clinicians' verdict of compare-runs (each
# shown when the results hold it)
HEADLINE_METRICS = ("fact_precision", "safety_acc", "unsafe_answer_share")


def format_value(key: str, value) -> str:
    """One table cell: percentages for fractions, CI as lo-hi, perplexity with two decimals, - for missing."""
    if value is None:
        return "-"
    if isinstance(value, (list, tuple)):
        return "–".join(f"{100 * v:.1f}" for v in value)
    if key == "reward_judge_mean":  # a raw reward: its sign and differences matter, not a percentage
        return f"{value:+.3f}"
    if key in NOT_FRACTIONS or key.startswith("exam_n"):
        return f"{value:.2f}" if isinstance(value, float) else str(value)
    return f"{100 * value:.1f}"


def _columns(results: dict) -> list[tuple[str, str]]:
    present = {k for m in results["stages"].values() for k, v in m.items() if v is not None}
    cols = [(k, label) for k, label in COLUMNS if k in present]
    extra_exams = sorted(k for k in present if k.startswith("exam_acc_") and k not in dict(COLUMNS))
    return cols + [(k, k.removeprefix("exam_acc_") + " acc") for k in extra_exams]


def results_table(results: dict) -> str:
    """One row per stage, one column per metric (the paper's Tables 4-6 in one)."""
    cols = _columns(results)
    lines = ["| stage | " + " | ".join(label for _, label in cols) + " |", "|---|" + "---:|" * len(cols)]
    for stage, metrics in results["stages"].items():
        lines.append(f"| {stage} | " + " | ".join(format_value(k, metrics.get(k)) for k, _ in cols) + " |")
    return "\n".join(lines)


def results_markdown(results: dict) -> str:
    """``results.md``: the table, what each column is, and the research-only notice."""
    s = results.get("settings", {})
    sizes = s.get("sets", {})
    k = s.get("k_shot", 0)
    notes = [
        f"- exam acc: {k}-shot option log-likelihood (per character) over {sizes.get('exam', '?')} questions "
        f"({k} demonstrations drawn from the exam and not scored); 95% Wilson interval; chance is 1/options.",
        f"- BLEU (sacrebleu, corpus) and ROUGE (rouge-score, mean F1) on characters, distinct-2 over all "
        f"answers: greedy answers to {sizes.get('qa', '?')} held-out questions.",
        f"- general PPL: token perplexity on {sizes.get('general', '?')} held-out general documents (lower is better).",
        f"- pref acc: {sizes.get('pref', '?')} held-out pairs ranked right by the implicit DPO reward (dpo, "
        "reference = sft) or by the stage's own mean log-likelihood per token (other stages).",
        "- Values are percentages except perplexity.",
    ]
    if sizes.get("pref_clinician"):
        notes.insert(4, f"- pref acc (clinician): the same on {sizes['pref_clinician']} held-out clinician pairs.")
    if any(m.get("fact_precision_ci95") for m in results["stages"].values()):
        notes.insert(2, FACT_NOTE)
    if "rm" in results["stages"]:
        notes.insert(
            -1,
            "- rm: the reward model; its pref acc is the share of held-out pairs whose chosen answer it rewards more.",
        )
    if sizes.get("safety"):  # training/evaluation/safety.py, docs/safety.md
        notes.insert(
            -1,
            f"- safety acc: 0-shot option log-likelihood over {sizes['safety']} CMeKG contraindication questions "
            "(the safe action among three unsafe ones; compare with base: the safe option's wording is likelier); "
            "unsafe answers: the share of greedy answers to them that the rule-based checker finds unsafe "
            "(recommends or doses the drug, or no advice to ask a doctor or pharmacist); 95% Wilson intervals.",
        )
    judge = results.get("reward_judge")
    if judge:
        notes.insert(
            -1,
            f"- RM score: the mean reward that {judge['checkpoint']} gives each stage's answers to the "
            "held-out questions (a raw reward, comparable under this judge only).",
        )
    parts = [f"# Evaluation of run {results['run_id']}", f"> {NOTICE}", results_table(results), "\n".join(notes)]
    if results.get("arena"):
        parts.append(arena_markdown(results["arena"]))
    return "\n\n".join(parts) + "\n"


def arena_markdown(arena: dict) -> str:
    """The clinicians' verdict on this run against its parent, on the shared bank prompts (``results.json``
    ``arena``, written by the loop and by ``./launch.sh compare-runs``)."""
    lines = [
        f"## Clinicians: {arena['new_checkpoint']} vs {arena['old_checkpoint']}",
        f"On {arena['split']} bank prompts judged for both runs ({arena['as_of']}): {arena['summary']}",
    ]
    if arena.get("metrics"):
        lines.append(headline_markdown(arena["metrics"], arena["new_run"], arena["old_run"]))
    return "\n\n".join(lines)


def headline_deltas(results: dict, other: dict, stage: str) -> dict:
    """The :data:`HEADLINE_METRICS` of ``stage`` that both runs' results hold: ``{key: {"run", "compare",
    "delta"}}`` (this run minus the other), as :func:`compare_results` gives them."""
    deltas = compare_results(results, other)["stages"].get(stage, {})
    return {k: deltas[k] for k in HEADLINE_METRICS if k in deltas}


def headline_markdown(metrics: dict, new_run: str, old_run: str) -> str:
    """The measured headline metrics beside the clinicians' verdict: one line each, in percent."""
    return "\n".join(
        f"- {dict(COLUMNS).get(k, k)}: {format_value(k, d['run'])} ({new_run}) vs {format_value(k, d['compare'])} "
        f"({old_run}), {100 * d['delta']:+.1f} points"
        for k, d in metrics.items()
    )


def stages_chart(results: dict, path: Path) -> None:
    """``stages.png``: per metric a group of bars, one per stage (exam accuracy and factual precision with their 95%
    CIs; the metrics a run's results lack are left out); perplexity
    beside it, on its own scale."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    stages = list(results["stages"])
    metrics = [m for m in CHART_METRICS if any(results["stages"][s].get(m) is not None for s in stages)]
    fig, (ax, ax_ppl) = plt.subplots(1, 2, figsize=(12, 4.5), gridspec_kw={"width_ratios": [4, 1]})
    width = 0.8 / max(len(stages), 1)
    for i, stage in enumerate(stages):
        m = results["stages"][stage]
        values = [100 * (m.get(k) or 0.0) for k in metrics]
        xs = [j + (i - (len(stages) - 1) / 2) * width for j in range(len(metrics))]
        ax.bar(xs, values, width, label=stage, color=f"C{i}")
        for key, interval in CHART_INTERVALS.items():
            if key in metrics and m.get(interval) and m.get(key) is not None:
                lo, hi = m[interval]
                value = m[key]
                ax.errorbar(
                    [xs[metrics.index(key)]],
                    [100 * value],
                    yerr=[[100 * (value - lo)], [100 * (hi - value)]],
                    fmt="none",
                    ecolor="black",
                    capsize=3,
                )
        ax_ppl.bar([i], [m.get("general_ppl") or 0.0], 0.7, color=f"C{i}")
    ax.set_xticks(range(len(metrics)), [dict(COLUMNS).get(k, k) for k in metrics], rotation=20)
    ax.set_ylabel("%")
    ax.set_title(f"run {results['run_id']}: metrics by stage")
    ax.legend()
    ax_ppl.set_xticks(range(len(stages)), stages)
    ax_ppl.set_title("general PPL\n(lower is better)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def model_card(
    run_id: str, stage: str, manifest: dict, metrics: dict, config: dict, stats: dict | None, section: str
) -> str:
    """The ``README.md`` of one stage: what it is, its metrics, data statistics and hyper-parameters."""
    entry = manifest["stages"][stage]
    kind = "full weights" if entry["kind"] == "full" else f"a LoRA adapter on `{entry['parent']}`"
    parts = [
        f"# ChiMed Arena run {run_id}: {stage}",
        f"> {NOTICE}",
        f"This checkpoint is {get_stage(stage).description}; it holds {kind}. Profile `{manifest.get('profile')}`"
        + (
            f"; the run continues run `{manifest['parent_run']}` (its earlier stages reused)"
            if manifest.get("parent_run")
            else ""
        )
        + ".",
        _load_snippet(run_id, stage),
        "## Evaluation\n\n"
        + _key_value_table(
            [(label, format_value(k, metrics.get(k))) for k, label in COLUMNS if metrics.get(k) is not None]
            + ([("exam n", str(metrics.get("exam_n")))] if get_stage(stage).generative else [])
        ),
    ]
    training = entry.get("metrics") or {}
    if training:
        parts.append("## Training\n\n" + _key_value_table([(k, _plain(v)) for k, v in training.items()]))
    hyper = config.get(section, {})
    shared = {k: config.get("train", {}).get(k) for k in ("seed", "bf16", "deepspeed_zero_stage")}
    parts.append(
        f"## Hyper-parameters (`{section}` section of the run's config)\n\n```json\n"
        + json.dumps({**hyper, "train": shared}, ensure_ascii=False, indent=2)
        + "\n```"
    )
    if manifest.get("dpo_pair_ids") and get_stage(stage).preference:
        parts.append(f"Trained on {len(manifest['dpo_pair_ids'])} preference pairs (ids in the run's manifest).")
    if stats:
        parts.append(
            "## Data (ChiMed, from `data/chimed/stats.json`; all tables in `stats.md`)\n\n"
            + _key_value_table(data_summary(stats))
        )
    return "\n\n".join(parts) + "\n"


def _load_snippet(run_id: str, stage: str) -> str:
    """How to load the stage: a model that answers (adapters merged), or the reward model (a scorer)."""
    if get_stage(stage).generative:
        return (
            "Load it (adapters merged):\n\n```python\nfrom training.modeling import load_stage\n"
            f'model, tokenizer = load_stage("runs/{run_id}", "{stage}")\n```'
        )
    return (
        "Load it (a sequence classifier with one output, adapters merged) and score answers:\n\n```python\n"
        "from training.trainer.reward_model import load_reward_model, reward_scores\n"
        f'model, tokenizer = load_reward_model("runs/{run_id}")\n'
        "rewards = reward_scores(model, tokenizer, prompts, answers)  # prompts: lists of messages\n```"
    )


def _plain(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else json.dumps(value, ensure_ascii=False)


def data_summary(stats: dict) -> list[tuple[str, str]]:
    """The headline numbers of the builder's statistics: entities, the size of each split and eval set,
    what deduplication removed."""
    rows = []
    entities = stats.get("entities", {})
    if entities:
        rows.append(
            (
                "CMeKG entities",
                f"{entities.get('selected', '?')} ({entities.get('train', '?')} for training, "
                f"{entities.get('held_out', '?')} held out for evaluation)",
            )
        )
    for split, numbers in stats.get("splits", {}).items():
        total = numbers.get("total", {})
        sources = ", ".join(numbers.get("by_source", {}))
        name = "general text of the base" if split == "base" else f"ChiMed-{split.upper()}"
        rows.append(
            (
                name,
                f"{total.get('records', 0):,} records, {total.get('chars', 0):,} "
                f"characters" + (f" ({sources})" if sources else ""),
            )
        )
    evals = stats.get("eval", {})
    if evals:
        rows.append(("eval sets", ", ".join(f"{name} {v.get('records', 0):,}" for name, v in evals.items())))
    for split, d in stats.get("dedup", {}).items():
        rows.append(
            (
                f"dedup {split}",
                f"{d.get('exact', 0):,} exact and {d.get('near', 0):,} near duplicates "
                f"removed, {d.get('kept', 0):,} kept",
            )
        )
    return rows


def _key_value_table(rows: list[tuple[str, str]]) -> str:
    return "\n".join(["| | |", "|---|---|"] + [f"| {k} | {v} |" for k, v in rows])


def compare_results(results: dict, other: dict) -> dict:
    """Per stage and metric: this run's value, the other run's, and this minus other."""
    stages = {}
    for stage in results["stages"]:
        if stage not in other["stages"]:
            continue
        a, b = results["stages"][stage], other["stages"][stage]
        stages[stage] = {
            k: {"run": a[k], "compare": b.get(k), "delta": a[k] - b[k]}
            for k in a
            if isinstance(a[k], (int, float)) and isinstance(b.get(k), (int, float)) and not isinstance(a[k], bool)
        }
    return {"run_id": results["run_id"], "compare": other["run_id"], "stages": stages}


def compare_markdown(deltas: dict) -> str:
    """Deltas table (run minus compared run): percentage points for fractions, perplexity as is."""
    keys = [k for k, _ in COLUMNS if any(k in m for m in deltas["stages"].values())]
    keys += sorted({k for m in deltas["stages"].values() for k in m} - set(keys))
    head = ["| stage | " + " | ".join(dict(COLUMNS).get(k, k) for k in keys) + " |", "|---|" + "---:|" * len(keys)]
    rows = []
    for stage, metrics in deltas["stages"].items():
        cells = []
        for k in keys:
            d = metrics.get(k, {}).get("delta")
            scale = 1 if k in NOT_FRACTIONS or k.startswith("exam_n") else 100
            cells.append("-" if d is None else f"{scale * d:+.2f}" if scale == 1 else f"{scale * d:+.1f}")
        rows.append(f"| {stage} | " + " | ".join(cells) + " |")
    return (
        "\n\n".join(
            [
                f"# Run {deltas['run_id']} compared with run {deltas['compare']}",
                f"> {NOTICE}",
                f"Deltas = {deltas['run_id']} minus {deltas['compare']}: percentage points, except perplexity and n.",
                "\n".join(head + rows),
            ]
        )
        + "\n"
    )
