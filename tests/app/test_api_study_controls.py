"""The browser's study controls through the API, tried as an annotator with ``gradio_client`` against the real app:
the guideline acknowledged before a judgment counts (``/acknowledge_guideline``), per-criterion 1-5 ``scores``
stored with the judgment under that guideline's version, refused judgments that store nothing, and the interim
results (``/leaderboard``, ``/agreement``) withheld from annotators only while a study round is open."""

from __future__ import annotations

from pathlib import Path

import pytest
from gradio_client import Client

from app.main import build_app
from core.config import load_config
from preference_store.repository import PreferenceStore

ANNOTATOR, ADMIN, PASSWORD = "dr_scores", "dr_scores_admin", "correct horse battery staple"
FAST = {"max_new_tokens": 2}  # the answers' content does not matter here
BANK = Path(__file__).parents[1] / "fixtures" / "bank" / "clinical_prompts.jsonl"  # a round hands out bank prompts
CRITERIA = [{"key": "safety", "name": "安全性 safety"}, {"key": "clarity", "name": "清晰 clarity"}]


@pytest.fixture
def running(app_home, start_app):
    home, run_id = app_home
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        annotator = store.add_annotator(ANNOTATOR, PASSWORD)
        admin = store.add_annotator(ADMIN, PASSWORD, role="admin")
        store.publish_guideline("先看安全，再看清晰。Safety first, then clarity.", CRITERIA, admin.id)
    return start_app(home), home, run_id, annotator.id, admin.id


def test_an_annotator_acknowledges_the_guideline_then_judges_with_scores(running, tmp_path):
    url, home, run_id, annotator_id, admin_id = running
    client = Client(url, auth=(ANNOTATOR, PASSWORD), verbose=False)
    pair = [f"{run_id}/sft", f"{run_id}/dpo"]
    db = f"sqlite:///{home / 'preferences.db'}"

    def stored() -> tuple[int, int]:
        """(comparisons, live judgments) of the annotator."""
        with PreferenceStore(db) as store:
            return (len(store.annotator_comparisons(annotator_id, limit=None)), store.count_judgments(annotator_id))

    made = client.predict("高血压患者饮食上要注意什么？", pair, True, api_name="/compare", **FAST)
    cid = made["comparison_id"]
    # before the published guideline is acknowledged, neither a judgment nor a rating counts
    for call in (
        lambda: client.predict(cid, "A", api_name="/judge"),
        lambda: client.predict(cid, "A", True, api_name="/rate"),
    ):
        with pytest.raises(Exception, match=r"guideline \(version 2\).*/acknowledge_guideline"):
            call()
    assert stored() == (1, 0)

    read = client.predict(api_name="/acknowledge_guideline")
    assert read["version"] == 2 and "Safety first" in read["text"]
    assert [c["key"] for c in read["criteria"]] == ["safety", "clarity"]

    # refused judgments store nothing, and the comparison stays open for a valid one
    for bad in (
        {"ranking": {"A": 1, "B": 2}, "correction": "多吃蔬菜，少盐，按时服药并定期复查血压。"},
        {"choice": "A", "scores": {"A": {"fluency": 4}}},  # not a criterion of version 2
        {"choice": "A", "scores": {"A": {"safety": 6}}},
    ):
        with pytest.raises(Exception, match="exactly one of|unknown criterion|integer 1-5"):
            client.predict(cid, api_name="/judge", **bad)
        assert stored() == (1, 0)

    scores = {"A": {"safety": 5, "clarity": 3}, "B": {"safety": 2}}
    out = client.predict(cid, "A", scores=scores, api_name="/judge")
    assert out["scores"] == scores and out["guideline_version"] == 2 and stored() == (1, 1)
    with PreferenceStore(db) as store:
        [judgment] = store.judgments_for(cid)
        assert judgment.scores == scores and judgment.guideline_version == 2
        rating = client.predict(cid, "B", False, api_name="/rate")
        assert rating["guideline_version"] == 2

        # a new version must be read again before the next judgment, which then records it
        store.publish_guideline("安全第一。Safety only.", CRITERIA[:1], admin_id)
        again = client.predict("头痛三天怎么办？", pair, True, api_name="/compare", **FAST)["comparison_id"]
        with pytest.raises(Exception, match=r"guideline \(version 3\)"):
            client.predict(again, "B", api_name="/judge")
        with pytest.raises(Exception, match="now version 3"):  # the caller read version 2
            client.predict(2, api_name="/acknowledge_guideline")
        assert client.predict(3, api_name="/acknowledge_guideline")["version"] == 3
        assert client.predict(again, "B", scores={"B": {"safety": 4}}, api_name="/judge")["guideline_version"] == 3
        assert store.judgments_for(again)[0].guideline_version == 3

        # the interim results: seen by everyone while no round is open, by admins only while one is
        assert client.predict(api_name="/leaderboard")["judgments"] == 2
        store.import_bank(BANK)
        store.start_queue_round(admin_id)
        for endpoint in ("/leaderboard", "/agreement"):
            with pytest.raises(Exception, match="round 2 is open: its interim results go to admins only"):
                client.predict(api_name=endpoint)
        assert Client(url, auth=(ADMIN, PASSWORD), verbose=False).predict(api_name="/leaderboard")["judgments"] == 2
    log = (tmp_path / "app-0.log").read_text(encoding="utf-8")
    assert "Traceback" not in log and f"refused /judge for {ANNOTATOR}: read the guideline (version 2)" in log


def test_interim_results_everyone_opens_the_figures_to_annotators(app_home, make_pool):
    cfg = load_config("tiny")
    with PreferenceStore.from_config(cfg) as store:
        store.import_bank(BANK)
        store.start_queue_round(None)  # a round is open; the caller is the demo annotator (no accounts)
        for setting, refused in (("admins", True), ("everyone", False)):
            cfg.study.interim_results = setting
            demo = build_app(cfg, store=store, pool=make_pool(cfg))
            endpoint = next(fn.fn for fn in demo.fns.values() if fn.api_name == "agreement")
            if refused:
                with pytest.raises(Exception, match="interim results go to admins only"):
                    endpoint()
            else:
                assert set(endpoint()) >= {"by_kind", "annotators", "outliers", "position_bias"}
