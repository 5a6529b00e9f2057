"""The API keeps the browser's rules, tried as an annotator with the official ``gradio_client`` against the real
app (``python -m chimed app --profile tiny``): blind results, shuffled labels, one vote, only the documented
endpoints public, admin actions refused with an error, and each refusal one line in the app's log."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from gradio_client import Client

from app.arena import Arena, ArenaSession
from app.main import build_app
from core.config import load_config
from core.errors import UserError
from preference_store.repository import PreferenceStore

API_PAGE = Path(__file__).resolve().parents[2] / "docs" / "api.md"
ANNOTATOR, ADMIN, PASSWORD = "dr_api", "dr_api_admin", "correct horse battery staple"
STAGES = ("base", "cpt", "sft", "dpo")
FAST = {"max_new_tokens": 2}  # the answers' content does not matter here: keep 50 comparisons cheap


def documented_endpoints() -> set[str]:
    """The endpoints the API page's table lists (its first column, under "## Endpoints")."""
    api = API_PAGE.read_text(encoding="utf-8").split("\n## Endpoints\n", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"^\| `(/\w+)` \|", api, flags=re.MULTILINE))


def _blind_view(result: dict, run_id: str) -> str:
    """The result as text without the answers' own words (a tiny model may say anything, "sft" too)."""
    shown = dict(result, answers=[{k: v for k, v in a.items() if k != "text"} for a in result.get("answers", [])])
    text = json.dumps(shown, ensure_ascii=False)
    assert run_id not in json.dumps(result, ensure_ascii=False)
    return text


def _private(client: Client, api_name: str) -> int:
    """The fn_index of a UI callback, made callable from this client as a caller who ignores gradio's
    private flag would call it (a raw HTTP request to the queue)."""
    for i, dependency in enumerate(client.config["dependencies"]):
        if dependency.get("api_name") == api_name:
            fn_index = dependency.get("id", i)
            client.endpoints[fn_index].is_valid = True
            return fn_index
    raise AssertionError(f"no UI callback {api_name}")


@pytest.fixture
def running(app_home, start_app, tmp_path):
    home, run_id = app_home
    bank = tmp_path / "bank.jsonl"
    bank.write_text(
        "\n".join(json.dumps({"prompt": p}, ensure_ascii=False) for p in ("头痛三天怎么办？", "高血压饮食注意什么？"))
        + "\n",
        encoding="utf-8",
    )
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        store.add_annotator(ANNOTATOR, PASSWORD)
        store.add_annotator(ADMIN, PASSWORD, role="admin")
        store.import_bank(bank)
    url = start_app(home)
    return url, home, run_id


def test_an_annotator_s_api_keeps_the_browser_s_rules(running, tmp_path):
    url, home, run_id = running
    client = Client(url, auth=(ANNOTATOR, PASSWORD), verbose=False)
    ids = [f"{run_id}/{s}" for s in STAGES]

    # only the documented endpoints are public, and they are docs/api.md's list
    listed = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert (
        listed
        == documented_endpoints()
        == {
            "/contestants",
            "/compare",
            "/acknowledge_guideline",
            "/judge",
            "/queue_next",
            "/rate",
            "/study_status",
            "/leaderboard",
            "/agreement",
            "/compare_runs",
            "/training_status",
            "/train_next_round",
        }
    )
    with pytest.raises(ValueError, match="Cannot find a function"):
        client.predict(api_name="/run_export")

    # /compare is blind: labels only, no checkpoint id, run or stage, and the two ids land in both orders
    pair = [ids[2], ids[3]]
    made = [client.predict("高血压患者饮食上要注意什么？", pair, True, api_name="/compare", **FAST) for _ in range(50)]
    for result in made:
        shown = _blind_view(result, run_id)
        assert result["blind"] is True and all(set(a) == {"label", "text", "warnings"} for a in result["answers"])
        assert not any(stage in shown for stage in STAGES) and "checkpoint" not in shown
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        orders = {tuple(r.checkpoint_id for r in store.get_comparison(m["comparison_id"]).responses) for m in made}
        assert all(store.get_comparison(m["comparison_id"]).blind for m in made)
    assert orders == {tuple(pair), tuple(pair[::-1])}

    # /queue_next is blind too
    item = client.predict(ids, True, api_name="/queue_next")
    assert item["assignment_id"] and len(item["answers"]) == 4 and item["blind"] is True
    shown = _blind_view(item, run_id)
    assert not any(stage in shown for stage in STAGES) and "checkpoint" not in shown
    # regenerate: the open prompt answered anew with its next seed, a new comparison of the same assignment, blind
    again = client.predict(ids, True, regenerate=True, api_name="/queue_next")
    assert (again["assignment_id"], again["blind"]) == (item["assignment_id"], True)
    assert again["comparison_id"] != item["comparison_id"] and again["seed"] != item["seed"]
    shown = _blind_view(again, run_id)
    assert not any(stage in shown for stage in STAGES) and "checkpoint" not in shown

    # /judge reveals, once: a second judgment is refused with or without a client id; a retry is a duplicate
    first = made[0]["comparison_id"]
    judged = client.predict(first, "A", client_id="vote-1", api_name="/judge")
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        assert judged["reveal"] == store.get_comparison(first).reveal and set(judged["reveal"].values()) == set(pair)
    for client_id in (None, "vote-2"):
        with pytest.raises(Exception, match="already judged"):
            client.predict(first, "B", client_id=client_id, api_name="/judge")
    retry = client.predict(first, "B", client_id="vote-1", api_name="/judge")
    assert retry["duplicate"] and retry["judgment_id"] == judged["judgment_id"]
    revised = client.predict(first, "B", revise=True, api_name="/judge")
    assert not revised["duplicate"] and revised["judgments_by_you"] == 1
    # and /rate, once per answer
    client.predict(item["comparison_id"], "A", True, api_name="/rate")
    with pytest.raises(Exception, match="already rated"):
        client.predict(item["comparison_id"], "A", False, api_name="/rate")

    # blind=False is an admin's: refused for an annotator, granted to an admin (names in the order given)
    with pytest.raises(Exception, match="only admins"):
        client.predict("头痛怎么办？", pair, True, blind=False, api_name="/compare", **FAST)
    admin = Client(url, auth=(ADMIN, PASSWORD), verbose=False)
    open_result = admin.predict("头痛怎么办？", pair, True, blind=False, api_name="/compare", **FAST)
    assert open_result["blind"] is False and [a["checkpoint_id"] for a in open_result["answers"]] == pair

    # admin actions raise for an annotator, even called past gradio's private flag; an admin's run
    for who, expected in ((client, "only admins"), (admin, None)):
        who.predict(fn_index=_private(who, "on_load"))  # the page load: the session knows its annotator
        if expected:
            with pytest.raises(Exception, match=expected):
                who.predict([], "all", False, fn_index=_private(who, "run_new_round"))
            with pytest.raises(Exception, match=expected):
                who.predict(fn_index=_private(who, "run_export"))
        else:
            assert "queue round 2" in who.predict([], "all", False, fn_index=_private(who, "run_new_round"))[0]

    # the study's figures: an annotator sees their own progress only, and no interim result; an admin all of it
    mine = client.predict(api_name="/study_status")
    assert [a["name"] for a in mine["annotators"]] == [ANNOTATOR] and mine["annotators"][0]["judgments"] == 1
    for endpoint in ("/leaderboard", "/agreement"):
        with pytest.raises(Exception, match="interim results go to admins only"):
            client.predict(api_name=endpoint)
    everyone = admin.predict(api_name="/study_status")
    assert {a["name"] for a in everyone["annotators"]} == {ANNOTATOR, ADMIN}
    board = admin.predict(api_name="/leaderboard")
    with PreferenceStore(f"sqlite:///{home / 'preferences.db'}") as store:
        ratings = store.leaderboard().ratings
    assert board["judgments"] == 1 and [(r["checkpoint_id"], r["rating"]) for r in board["ratings"]] == [
        (r.checkpoint_id, pytest.approx(r.rating)) for r in ratings
    ]
    assert set(admin.predict(api_name="/agreement")) >= {"by_kind", "annotators", "outliers", "position_bias"}

    # every refusal above is one line in the app's log, and no traceback
    log = (tmp_path / "app-0.log").read_text(encoding="utf-8")
    assert "Traceback" not in log
    assert f"refused /judge for {ANNOTATOR}: already judged; " in log
    assert f"refused /compare for {ANNOTATOR}: only admins may ask for an unblinded comparison" in log
    assert f"refused /run_export for {ANNOTATOR}: only admins can export" in log
    assert f"refused /leaderboard for {ANNOTATOR}: study round 2 is open: its interim results go to admins" in log


def test_a_blind_comparison_started_in_the_browser_is_judged_once_through_the_api(app_home, make_pool):
    cfg = load_config("tiny")
    with PreferenceStore.from_config(cfg) as store:
        demo = build_app(cfg, store=store, pool=make_pool(cfg))
        judge = next(fn.fn for fn in demo.fns.values() if fn.api_name == "judge")
        arena = Arena(cfg, store, make_pool(cfg))
        session = ArenaSession(annotator=store.demo_annotator(), notice_accepted=True)
        store.mark_guideline_seen(session.annotator.id, store.guideline().version)
        arena.start(session, [f"{app_home[1]}/sft", f"{app_home[1]}/dpo"], blind=True)
        list(arena.ask(session, "感冒要吃抗生素吗？", arena.queue_decoding("free")))
        assert store.get_comparison(session.comparison_id).blind

        out = judge(session.comparison_id, "A")  # through the API, as the same (demo) annotator
        assert out["reveal"] == store.get_comparison(session.comparison_id).reveal
        with pytest.raises(UserError, match="already judged"):  # the browser's vote is now a second one
            arena.vote(session, "B")
        with pytest.raises(Exception, match="already judged"):
            judge(session.comparison_id, "B")
        # the names are known now: the conversation's next turn is stored as not blind, as in the browser
        list(arena.ask(session, "那发烧呢？", arena.queue_decoding("free")))
        assert store.get_comparison(session.comparison_id).blind is False
