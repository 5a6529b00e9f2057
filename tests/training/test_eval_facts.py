"""Issue 34, factual precision: the claims of hand-written answers, their verdicts against the packaged CMeKG
(every fact used here is looked up in the graph first, so a test cannot pass on an invented fact), the stage's
metrics with their Wilson intervals, the GRPO facts reward, and the results' fields and report."""

from __future__ import annotations

import json

import pytest

from core.files import read_jsonl
from core.sources import load_cmekg
from training.evaluation import report
from training.evaluation.facts import (
    CONFIRMED,
    CONTRADICTED,
    UNCHECKABLE,
    Claim,
    annotate,
    extract_claims,
    fact_checker,
    fact_metrics,
    make_facts_reward,
)
from training.evaluation.metrics import wilson_interval

DIABETES_QA = "糖尿病的常见症状有多饮、多尿、头顶发光等。如有不适，请及时到内分泌科或眼科就诊，在医生指导下诊治。"
DRUG_QA = "新亚果糖的不良反应有脸红、皮疹等。请在医生或药师指导下使用。"
CONSULTATION = (
    "根据您描述的多饮、多尿等症状，可能是糖尿病，也需要与尿崩症相鉴别。可以做空腹血糖测定、尿常规等检查以明确诊断。"
    "如有不适，请及时到内分泌科就诊，在医生指导下诊治。请不要自行用药。"
)


@pytest.fixture(scope="module")
def graph():
    return load_cmekg()


@pytest.fixture(scope="module")
def checker():
    return fact_checker()


def test_the_facts_used_here_are_cmekgs(graph):
    diabetes, fructose = graph["糖尿病"], graph["新亚果糖"]
    assert {"多饮", "多尿"} <= set(diabetes["常见症状"]) and "内分泌科" in diabetes["就诊科室"]
    assert "眼科" not in diabetes["就诊科室"] and "空腹血糖测定" in diabetes["实验室检查"]
    assert "尿常规" not in str(diabetes) and "头顶发光" not in str(graph)
    assert "脸红" in fructose["不良反应"] and "皮疹" not in str(fructose)
    assert fructose["OTC类型"] == ["甲类OTC"] and "营养不良" in fructose["适应症"]
    assert graph["腰疝"]["多发群体"] == ["男性老年人"] and "某某综合征" not in graph
    assert any("青壮年人" in r.get("多发群体", []) for r in graph.values())
    # the wrong values are other entities' values of the same relation
    assert any("眼科" in r.get("就诊科室", []) for r in graph.values())
    assert any("皮疹" in r.get("不良反应", []) for r in graph.values())
    assert any("尿常规" in r.get("检查", []) + r.get("实验室检查", []) for r in graph.values())
    assert any(r.get("OTC类型") == ["乙类OTC"] for r in graph.values())
    assert graph["马来酸多潘立酮片"]["OTC类型"] == ["乙类OTC", "甲类OTC"]
    assert graph["耳、鼻、咽拭子细菌培养"]["所属分类"] == ["病原体"]


def test_claims_in_the_house_style_and_their_verdicts(checker):
    assert checker.check(DIABETES_QA) == [
        (Claim("糖尿病", "symptom", "多饮"), CONFIRMED),
        (Claim("糖尿病", "symptom", "多尿"), CONFIRMED),
        (Claim("糖尿病", "symptom", "头顶发光"), UNCHECKABLE),  # stated of no entity: the graph cannot say
        # the closing advice states the department of the answer's subject
        (Claim("糖尿病", "department", "内分泌科"), CONFIRMED),
        (Claim("糖尿病", "department", "眼科"), CONTRADICTED),
    ]
    assert checker.check(DRUG_QA) == [
        (Claim("新亚果糖", "adverse_reaction", "脸红"), CONFIRMED),
        (Claim("新亚果糖", "adverse_reaction", "皮疹"), CONTRADICTED),
    ]


def test_claims_in_the_consultation_closing_and_other_phrasings(checker):
    assert checker.check(CONSULTATION) == [
        (Claim("糖尿病", "symptom", "多饮"), CONFIRMED),
        (Claim("糖尿病", "symptom", "多尿"), CONFIRMED),
        (Claim("糖尿病", "examination", "空腹血糖测定"), CONFIRMED),
        (Claim("糖尿病", "examination", "尿常规"), CONTRADICTED),
        (Claim("糖尿病", "department", "内分泌科"), CONFIRMED),
    ]
    # the builder's other phrasings (CPT prose), a value-constrained relation before the generic "X属于Y", a
    # list without the closing 等, a clause after a greeting
    assert checker.check("使用新亚果糖后可能出现心悸等不良反应。新亚果糖属于乙类非处方药。") == [
        (Claim("新亚果糖", "adverse_reaction", "心悸"), CONFIRMED),
        (Claim("新亚果糖", "otc", "乙类非处方药"), CONTRADICTED),
    ]
    # a list of value-constrained values; an entity whose name holds 、
    assert checker.check(
        "马来酸多潘立酮片属于乙类非处方药、甲类非处方药。耳、鼻、咽拭子细菌培养在检查分类中属于病原体。"
    ) == [
        (Claim("马来酸多潘立酮片", "otc", "乙类非处方药"), CONFIRMED),
        (Claim("马来酸多潘立酮片", "otc", "甲类非处方药"), CONFIRMED),
        (Claim("耳、鼻、咽拭子细菌培养", "test_category", "病原体"), CONFIRMED),
    ]
    assert checker.check("您好，新亚果糖主要用于治疗营养不良。腰疝多见于男性老年人。") == [
        (Claim("新亚果糖", "indication", "营养不良"), CONFIRMED),
        (Claim("腰疝", "population", "男性老年人"), CONFIRMED),
    ]


def test_a_bare_answer_claims_what_the_question_asked(checker):
    # ChiMed-CPT's QA text answers with the values alone: they are claims of the question's entity and relation
    assert checker.topic("哪些人容易得腰疝？") == ("腰疝", "population")
    assert checker.check("男性老年人。", "哪些人容易得腰疝？") == [
        (Claim("腰疝", "population", "男性老年人"), CONFIRMED)
    ]
    assert checker.check("青壮年人。", "哪些人容易得腰疝？") == [
        (Claim("腰疝", "population", "青壮年人"), CONTRADICTED)
    ]
    # the advice's department goes to the question's entity when the answer names none
    assert checker.check("多饮、多尿。如有不适，请及时到内分泌科就诊。", "糖尿病有哪些常见症状？") == [
        (Claim("糖尿病", "symptom", "多饮"), CONFIRMED),
        (Claim("糖尿病", "symptom", "多尿"), CONFIRMED),
        (Claim("糖尿病", "department", "内分泌科"), CONFIRMED),
    ]
    # a question in no relation's wording gives no topic, and a first sentence in the house style is read as such
    assert checker.topic("医生您好，我最近头疼。") is None
    assert checker.check(DRUG_QA, "哪些人容易得腰疝？")[0] == (Claim("新亚果糖", "adverse_reaction", "脸红"), CONFIRMED)


def test_what_is_not_a_checkable_claim(checker):
    # an entity the graph does not hold; a relation the graph states nothing of for that entity
    assert checker.check("某某综合征的常见症状有多饮等。") == [(Claim("某某综合征", "symptom", "多饮"), UNCHECKABLE)]
    assert checker.check("糖尿病的不良反应有皮疹等。") == [(Claim("糖尿病", "adverse_reaction", "皮疹"), UNCHECKABLE)]
    # advice alone names no subject; "医院" is advice, not a department; plain talk makes no claim
    assert extract_claims("如有不适，请及时到内分泌科就诊，在医生指导下诊治。") == []
    assert checker.check("新亚果糖的不良反应有脸红等。如有不适，请及时到医院就诊。") == [
        (Claim("新亚果糖", "adverse_reaction", "脸红"), CONFIRMED)
    ]
    assert extract_claims("多喝水，注意休息。") == [] and extract_claims("") == []
    # a repeated claim counts once
    assert len(extract_claims("腰疝多见于男性老年人。腰疝的多发人群是男性老年人。")) == 1


def test_a_stages_fact_metrics_are_shares_with_wilson_intervals(checker):
    generations = [
        {"id": i, "reference": "", "answer": a} for i, a in enumerate([DIABETES_QA, DRUG_QA, CONSULTATION, "多喝水。"])
    ]
    annotated = annotate(checker, generations)
    assert annotated[1]["claims"][1] == {
        "entity": "新亚果糖",
        "relation": "adverse_reaction",
        "value": "皮疹",
        "verdict": CONTRADICTED,
    }
    metrics = fact_metrics(annotated)
    # 5 + 2 + 5 claims: 8 confirmed, 3 contradicted, 1 uncheckable
    assert metrics["fact_claims_n"] == 12 and metrics["fact_checkable_n"] == 11
    assert metrics["fact_answers_with_claims"] == 3
    assert metrics["fact_precision"] == pytest.approx(8 / 11)
    assert metrics["fact_precision_ci95"] == pytest.approx(list(wilson_interval(8, 11)))
    assert (metrics["fact_confirmed_share"], metrics["fact_contradicted_share"]) == pytest.approx((8 / 12, 3 / 12))
    assert metrics["fact_uncheckable_share"] == pytest.approx(1 / 12)
    assert metrics["fact_contradicted_ci95"] == pytest.approx(list(wilson_interval(3, 12)))
    empty = fact_metrics(annotate(checker, generations[3:]))
    assert empty["fact_precision"] is None and empty["fact_precision_ci95"] is None and empty["fact_claims_n"] == 0


def test_the_grpo_facts_reward_is_an_answers_precision(checker):
    reward = make_facts_reward(checker)
    assert reward.__name__ == "facts_reward"  # what TRL logs it under
    answers = (DRUG_QA, CONSULTATION, "脸红。", "多喝水。", "青壮年人。")
    completions = [[{"role": "assistant", "content": a}] for a in answers]
    prompts = [[]] * 4 + [[{"role": "user", "content": "哪些人容易得腰疝？"}]]
    scores = reward(prompts=prompts, completions=completions, kind=["open", "open", "exam", "open", "open"])
    # no checkable claim (a bare exam option, plain advice): the reward does not apply; a bare answer is read
    # against the prompt's question
    assert scores == [pytest.approx(1 / 2), pytest.approx(4 / 5), None, None, 0.0]


def test_the_report_shows_fact_precision_and_skips_absent_metrics(tmp_path, checker, monkeypatch):
    generations = [{"id": 0, "reference": "", "answer": a} for a in (DIABETES_QA, DRUG_QA)]
    stage = {"exam_acc": 0.5, "exam_ci95": [0.4, 0.6], "bleu1": 0.3, **fact_metrics(annotate(checker, generations))}
    results = {"run_id": "r1", "stages": {"base": stage, "cpt": {**stage, "fact_precision": 0.8}}, "settings": {}}
    markdown = report.results_markdown(results)
    assert "| fact prec | fact 95% CI | confirmed | contradicted | uncheckable | claims |" in markdown
    assert f"| {100 * 4 / 6:.1f} | " in markdown and "| 7 |" in markdown  # 7 claims, a count, not a percentage
    assert "Factual precision" in markdown
    # the chart draws fact_precision (with its interval) and leaves out the safety metrics these results lack
    report.stages_chart(results, tmp_path / "stages.png")
    assert (tmp_path / "stages.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from matplotlib.axes import Axes

    ticks: list[list[str]] = []
    set_xticks = Axes.set_xticks
    monkeypatch.setattr(
        Axes,
        "set_xticks",
        lambda ax, xs, labels=None, **kw: ticks.append(list(labels or [])) or set_xticks(ax, xs, labels, **kw),
    )
    safety = {**results, "stages": {**results["stages"], "cpt": {**stage, "safety_acc": 0.6}}}
    report.stages_chart(safety, tmp_path / "safety.png")
    # one safety metric in one stage's results: drawn; the other, in none: left out
    assert "fact prec" in ticks[0] and "safety acc" in ticks[0] and "unsafe answers" not in ticks[0]
    # beside the clinicians' verdict: the headline metrics both runs hold
    other = {"run_id": "r0", "stages": {"cpt": {**stage, "fact_precision": 0.5, "safety_acc": 0.9}}}
    deltas = report.headline_deltas(results, other, "cpt")
    assert list(deltas) == ["fact_precision"] and deltas["fact_precision"]["delta"] == pytest.approx(0.3)
    assert "fact prec: 80.0 (r1) vs 50.0 (r0), +30.0 points" in report.headline_markdown(deltas, "r1", "r0")


def test_an_evaluated_run_reports_fact_precision_for_every_answering_stage(tiny_run):
    home, run_id = tiny_run
    out = home / "runs" / run_id / "eval"
    results = json.loads((out / "results.json").read_text(encoding="utf-8"))
    for stage in ("base", "cpt", "sft", "dpo"):
        metrics = results["stages"][stage]
        generations = read_jsonl(out / "generations" / f"{stage}.jsonl")
        assert all(isinstance(g["claims"], list) for g in generations)
        # the stage's numbers are those of its written claims
        assert {k: metrics[k] for k in fact_metrics(generations)} == fact_metrics(generations)
        assert {"id", "reference", "answer", "claims"} <= set(generations[0])
        assert metrics["fact_claims_n"] == sum(len(g["claims"]) for g in generations)
    # the tiny stages seldom make a checkable claim: their precision may be "-", their claims are counted
    assert " claims |" in (out / "results.md").read_text(encoding="utf-8")


def test_the_clinicians_verdict_is_recorded_with_both_runs_headline_metrics(use_home, tmp_path):
    from core.config import load_config
    from core.files import write_json_atomic
    from training.evaluation.evaluate import record_arena_comparison

    use_home(tmp_path)
    cfg = load_config("tiny")
    stages = {"new": {"sft": {"fact_precision": 0.75, "bleu1": 0.4}}, "old": {"sft": {"fact_precision": 0.5}}}
    for run_id, metrics in stages.items():
        write_json_atomic(cfg.runs_dir / run_id / "eval" / "results.json", {"run_id": run_id, "stages": metrics})
    arena = {
        "new_run": "new",
        "old_run": "old",
        "stage": "sft",
        "new_checkpoint": "new/sft",
        "old_checkpoint": "old/sft",
        "split": "heldout",
        "as_of": "2026-12-07T18:00:00+00:00",
        "summary": "undecided",
    }
    path = record_arena_comparison(cfg, "new", arena)
    recorded = json.loads(path.read_text(encoding="utf-8"))["arena"]["metrics"]
    assert list(recorded) == ["fact_precision"] and recorded["fact_precision"]["delta"] == pytest.approx(0.25)
    assert "fact prec: 75.0 (new) vs 50.0 (old), +25.0 points" in (path.parent / "results.md").read_text("utf-8")
