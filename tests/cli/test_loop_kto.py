"""Issue 22, the loop with ``align.method=kto``: thumbs up/down on single answers through the running app's API
-> the retrain exports them -> ChiMed-KTO holds the train ones -> ``train-all --from align`` trains a kto stage
that the app and the store list without a restart."""

from __future__ import annotations

import json
import shutil

from chimed import train_and_register
from core.config import load_config
from core.files import read_jsonl
from preference_store.exports.rules import heldout_split
from preference_store.repository import PreferenceStore
from tests.cli.test_loop import PROMPTS, _start_app, _stop

# of the loop test's prompts, these land on both sides of the by-prompt split (4 train, 2 held out)
RATED = PROMPTS[:6]
CORRECTION = "高血压患者应少盐少油、控制体重、戒烟限酒；血压控制不好请到心内科复诊，电话13812345678。"
PHONE = "13812345678"


def test_ratings_through_the_app_flow_into_a_new_kto_run_that_the_app_serves(tiny_run, tmp_path, use_home):
    source_home, old_run = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home, home, symlinks=True)
    cfg = load_config("tiny", ["align.method=kto"])
    with PreferenceStore(cfg.database_url) as store:
        store.add_annotator("clinician1", "a-long-test-password", role="annotator")

    from gradio_client import Client

    proc, url = _start_app(home, tmp_path / "app.log")
    try:
        client = Client(url, auth=("clinician1", "a-long-test-password"), verbose=False)
        # each prompt: answer A rated down, answer B up (blind: A is SFT's or DPO's by chance); one rating,
        # revised, down with a better answer (typed with a phone number: sent redacted)
        made, empty = {}, set()  # the tiny models may say nothing: an empty rated answer is left out of KTO's data
        for prompt in RATED:
            cmp = client.predict(prompt, [f"{old_run}/sft", f"{old_run}/dpo"], True, api_name="/compare")
            made[prompt] = cmp["comparison_id"]
            empty |= {(prompt, a["label"]) for a in cmp["answers"] if not a["text"].strip()}
            down = client.predict(cmp["comparison_id"], "A", False, api_name="/rate")
            up = client.predict(cmp["comparison_id"], "B", True, api_name="/rate")
            assert (down["up"], up["up"]) == (False, True) and not down["duplicate"]
        corrected = client.predict(
            made[RATED[0]], "A", False, CORRECTION, redact=True, client_id="fix-1", revise=True, api_name="/rate"
        )  # one rating per answer: this one replaces it
        assert corrected["identifiers"] == {"phone": 1}

        new_run = train_and_register(cfg, from_stage="align", resume_run=old_run)

        # the retrain exported every rating once, de-identified, each prompt's ratings on one side of the split
        with PreferenceStore(cfg.database_url) as store:
            rating_ids = {r.id for r in store.ratings()}
            registered = {c.id for c in store.list_checkpoints(new_run)}
        [exported_file] = cfg.collected_ratings_dir.glob("*.jsonl")
        exported = read_jsonl(exported_file)
        assert len(rating_ids) == 2 * len(RATED)
        # every rating is exported but those of an empty answer (the sampled tiny answers may be empty)
        missing = rating_ids - {r["rating_id"] for r in exported}
        assert {r["rating_id"] for r in exported} <= rating_ids and len(missing) <= len(empty)
        # the correction is one more, desirable answer; an empty rated answer is no record (and counted)
        assert len(exported) == len(rating_ids) + 1 - len(empty)
        splits = {}
        for r in exported:
            splits.setdefault(r["prompt"][0]["content"], set()).add(r["split"])
        # each prompt's split is the by-prompt hash of the pairs (a prompt whose rated answers were all empty has
        # no record, but its split is the same)
        split_of = {
            p: heldout_split(
                json.dumps([{"role": "user", "content": p}], ensure_ascii=False, sort_keys=True),
                cfg.store.heldout_share,
            )
            for p in RATED
        }
        assert all(s == {split_of[p]} for p, s in splits.items())
        train = {
            (r["rating_id"], r["provenance"]["completion_of"], r["label"]) for r in exported if r["split"] == "train"
        }
        held = {r["rating_id"] for r in exported if r["split"] == "heldout"}
        # 4 train prompts x 2 ratings, and the revised rating's correction; 2 held-out prompts x 2
        train_prompts = {p for p, s in split_of.items() if s == "train"}
        empty_train = sum(1 for prompt, _ in empty if prompt in train_prompts)
        assert len(train_prompts) == 4, "the rated prompts must land on both sides of the split"
        assert len(train) == 4 * 2 + 1 - empty_train and len(held) == 2 * 2 - (len(empty) - empty_train)

        # ChiMed-KTO holds exactly the train ratings (the correction desirable), beside ChiMed-DPO's pairs
        kto = read_jsonl(cfg.data_dir / "kto.jsonl")
        rated = [e for e in kto if "rating_id" in e]
        assert {(e["rating_id"], e["provenance"]["completion_of"], e["label"]) for e in rated} == train
        assert not held & {e["rating_id"] for e in rated}
        [fixed] = [e for e in rated if e["provenance"]["completion_of"] == "correction"]
        assert fixed["label"] is True and "[PHONE]" in fixed["completion"][0]["content"]
        assert PHONE not in (cfg.data_dir / "kto.jsonl").read_text(encoding="utf-8")
        assert PHONE not in exported_file.read_text(encoding="utf-8")

        # the new run aligned the old run's SFT by KTO on them, and says so
        manifest = json.loads((cfg.runs_dir / new_run / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["parent_run"] == old_run and list(manifest["stages"]) == ["base", "cpt", "sft", "kto"]
        metrics = manifest["stages"]["kto"]["metrics"]
        assert metrics["from_ratings"] == len(train) and manifest["stages"]["kto"]["method"]["name"] == "kto"
        assert metrics["desirable"] + metrics["undesirable"] == len(kto)
        results = json.loads((cfg.runs_dir / new_run / "eval" / "results.json").read_text(encoding="utf-8"))
        assert results["stages"]["kto"]["pref_acc"] is not None

        # the store and the running app list the new run's kto stage, and the app answers with it
        assert f"{new_run}/kto" in registered and f"{new_run}/dpo" not in registered
        assert f"{new_run}/kto" in client.predict(api_name="/contestants")
        again = client.predict(RATED[0], [f"{old_run}/dpo", f"{new_run}/kto"], True, api_name="/compare")
        assert len(again["answers"]) == 2  # blind: the names come with the judgment
        revealed = client.predict(again["comparison_id"], "tie", api_name="/judge")["reveal"]
        assert set(revealed.values()) == {f"{old_run}/dpo", f"{new_run}/kto"}
    finally:
        _stop(proc)
