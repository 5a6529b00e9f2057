"""Issue 7, the loop: judgments in the store and through the running app's API -> export -> ChiMed-DPO ->
``train-all --from dpo`` -> a new run with its parent, its pair ids, a comparison table, served by the app.
Identifiers typed through the API or stored through the store's API never reach the exported files or
ChiMed-DPO (issue 19)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from chimed import train_and_register as train_all
from core.config import load_config
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.repository import PreferenceStore
from training.evaluation.evaluate import evaluate_run

REPO = Path(__file__).resolve().parents[2]
# prompts a clinician might try; answers are taken from the tiny build's held-out QA references
PROMPTS = [
    "高血压患者饮食上要注意什么？",
    "糖尿病有哪些常见症状？",
    "感冒发烧应该怎么处理？",
    "头痛一般挂什么科？",
    "胃炎需要做哪些检查？",
    "失眠有什么改善方法？",
    "贫血的常见原因有哪些？",
    "咳嗽很久不好怎么办？",
    "哮喘发作时应该怎么做？",
    "腹泻要注意补充什么？",
]

CORRECTION = "头痛时可先安静休息、保证睡眠；如果头痛剧烈、反复发作，或伴有发热、呕吐，应及时就医。"
# obviously fake identifiers: typed through the app's API (sent redacted) and stored through the store's API
API_CASE = "我叫李明，电话13812345678，头痛怎么办？"
API_CORRECTION = "先安静休息，头痛加重及时就医；复诊可拨打13987654321预约。"
STORE_CASE = "患者王秀英，手机13700001111，胃痛两天，需要做哪些检查？"
STORE_CORRECTION = "建议先查血常规和胃镜；联系人电话13600002222。"
SECRETS = ("李明", "13812345678", "13987654321", "王秀英", "13700001111", "13600002222")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_app(home: Path, log_path: Path) -> tuple[subprocess.Popen, str]:
    env = dict(os.environ, CHIMED_HOME=str(home))
    env.pop("CHIMED_DATABASE_URL", None)
    port = _free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "chimed", "app", "--profile", "tiny", "--port", str(port)],
        cwd=REPO,
        env=env,
        stdout=log_path.open("w"),
        stderr=subprocess.STDOUT,
    )
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 180
    while True:
        if proc.poll() is not None:
            pytest.fail(f"the app exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        try:
            urllib.request.urlopen(url, timeout=2)
            return proc, url
        except OSError:
            if time.monotonic() > deadline:
                proc.kill()
                pytest.fail(f"the app did not answer at {url}:\n{log_path.read_text()[-3000:]}")
            time.sleep(0.5)


def _stop(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _compare_answered(client, prompt: str, checkpoints: list[str], **kwargs) -> dict:
    """A comparison through the API whose answers all have text: a sampled tiny model may answer with
    nothing (its end token first), and a pair against an empty answer is rightly never exported, so the
    test asks again with the next seed (an unjudged comparison makes no pair)."""
    for seed in range(42, 52):
        made = client.predict(prompt, checkpoints, True, seed=seed, api_name="/compare", **kwargs)
        if all(answer["text"].strip() for answer in made["answers"]):
            return made
    raise AssertionError(f"ten seeds, and an empty answer each time: {made['answers']}")


def _record_store_judgments(store: PreferenceStore, run_id: str, references: list[str]) -> None:
    """One comparison per prompt between the run's SFT and DPO answers, judged as a vote or a correction."""
    annotator = store.add_annotator("clinician1", "a-long-test-password", role="annotator")
    for i, prompt in enumerate(PROMPTS):
        comparison = store.record_comparison(
            ComparisonIn(
                annotator.id,
                [{"role": "user", "content": prompt}],
                [ResponseIn(f"{run_id}/sft", references[2 * i]), ResponseIn(f"{run_id}/dpo", references[2 * i + 1])],
            )
        )
        if i % 3 == 2:
            judgment = JudgmentIn(comparison.id, annotator.id, correction=references[-1 - i] + "建议及时就医。")
        else:
            judgment = JudgmentIn(comparison.id, annotator.id, choice="A" if i % 2 else "B")
        store.submit_judgment(judgment)


def test_judgments_flow_into_a_new_dpo_run_that_the_app_serves(tiny_run, tmp_path, use_home):
    source_home, old_run = tiny_run
    home = use_home(tmp_path / "home")
    shutil.copytree(source_home, home, symlinks=True)
    cfg = load_config("tiny")
    references = [
        json.loads(line)["reference"]
        for line in (cfg.data_dir / "eval" / "qa.jsonl").read_text(encoding="utf-8").splitlines()
    ]
    assert len(references) >= 2 * len(PROMPTS) + 1

    with PreferenceStore(cfg.database_url) as store:
        _record_store_judgments(store, old_run, references)
        clinician = store.annotator_by_name("clinician1")
        typed = store.record_comparison(
            ComparisonIn(
                clinician.id,
                [{"role": "user", "content": STORE_CASE}],
                [ResponseIn(f"{old_run}/sft", "建议就医。"), ResponseIn(f"{old_run}/dpo", "多喝热水。")],
            )
        )
        store.submit_judgment(JudgmentIn(typed.id, clinician.id, correction=STORE_CORRECTION))

    # one judgment through the running app's own API
    from gradio_client import Client

    proc, url = _start_app(home, tmp_path / "app.log")
    try:
        client = Client(url, auth=("clinician1", "a-long-test-password"), verbose=False)
        made = _compare_answered(client, "头痛怎么办？", [f"{old_run}/cpt", f"{old_run}/dpo"])
        # a correction: chosen over both answers whatever the tiny models said (two identical answers
        # would make no pair from a vote)
        judged = client.predict(made["comparison_id"], None, None, CORRECTION, api_name="/judge")
        assert judged["kind"] == "correction" and len(judged["pair_ids"]) == 2
        app_pair = judged["pair_ids"][0]
        # identifiers through the API: refused, then sent redacted with redact=True
        with pytest.raises(Exception, match="identifiers"):
            client.predict(API_CASE, [f"{old_run}/cpt", f"{old_run}/dpo"], True, api_name="/compare")
        case = _compare_answered(client, API_CASE, [f"{old_run}/cpt", f"{old_run}/dpo"], redact=True)
        assert case["identifiers"] == {"name": 1, "phone": 1}
        fixed = client.predict(case["comparison_id"], None, None, API_CORRECTION, redact=True, api_name="/judge")
        assert fixed["identifiers"] == {"phone": 1} and len(fixed["pair_ids"]) == 2

        new_run = train_all(cfg, from_stage="dpo", resume_run=old_run)

        # the export the retrain made: every pair, split by comparison into train and held-out
        exported = [
            json.loads(line)
            for f in sorted(cfg.collected_pairs_dir.glob("*.jsonl"))
            for line in f.read_text(encoding="utf-8").splitlines()
        ]
        with PreferenceStore(cfg.database_url) as store:
            pairs = store.recent_pairs(limit=1000)
            consumed = set(store.consumed_pair_ids(new_run))
        # every pair was exported once, except one saying word for word what an exported one says, one
        # whose two answers are alike and one with an empty answer (the tiny models may answer alike, or
        # with nothing at all when sampling picks the end token first)
        content = {
            p.id: json.dumps([p.prompt, p.chosen, p.rejected], ensure_ascii=False)
            for p in pairs
            if p.chosen.strip() and p.rejected.strip() and p.chosen.strip() != p.rejected.strip()
        }
        exported_ids = {r["pair_id"] for r in exported}
        assert exported_ids <= set(content) and app_pair in content
        assert {content[p] for p in exported_ids} == set(content.values()) and len(exported) == len(exported_ids)
        # no identifier typed through either API is in the exported files, ChiMed-DPO or its held-out pairs
        written = [f.read_text(encoding="utf-8") for f in cfg.collected_pairs_dir.glob("*.jsonl")] + [
            (cfg.data_dir / name).read_text(encoding="utf-8") for name in ("dpo.jsonl", "eval/pref_clinician.jsonl")
        ]
        assert not [secret for secret in SECRETS if any(secret in text for text in written)]
        assert "[PHONE]" in "".join(written[:-2]) and "胃痛两天" in "".join(written[:-2])
        train_ids = {r["pair_id"] for r in exported if r["split"] == "train"}
        heldout_ids = {r["pair_id"] for r in exported if r["split"] == "heldout"}
        assert train_ids and heldout_ids, "the fixture prompts must land on both sides of the split"
        by_comparison: dict[str, set[str]] = {}
        for r in exported:
            by_comparison.setdefault(r["provenance"]["comparison_id"], set()).add(r["split"])
        assert all(len(splits) == 1 for splits in by_comparison.values())

        # the new run trained on exactly the exported non-held-out clinician pairs, and says so
        manifest = json.loads((cfg.runs_dir / new_run / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["parent_run"] == old_run
        clinician_ids = {p for p in manifest["dpo_pair_ids"] if p.startswith("clin-")}
        assert clinician_ids == train_ids
        dpo_data = [json.loads(line) for line in (cfg.data_dir / "dpo.jsonl").read_text(encoding="utf-8").splitlines()]
        assert {r["pair_id"] for r in dpo_data if r["source"] == "clinician"} == train_ids
        assert consumed == train_ids
        held = [
            json.loads(line)
            for line in (cfg.data_dir / "eval" / "pref_clinician.jsonl").read_text(encoding="utf-8").splitlines()
        ]
        assert {r["pair_id"] for r in held} == heldout_ids

        # the earlier stages are the old run's; the evaluation reports the clinician-held-out pairs
        assert (
            manifest["stages"]["sft"]["metrics"]
            == json.loads((cfg.runs_dir / old_run / "manifest.json").read_text(encoding="utf-8"))["stages"]["sft"][
                "metrics"
            ]
        )
        results = json.loads((cfg.runs_dir / new_run / "eval" / "results.json").read_text(encoding="utf-8"))
        assert all(results["stages"][s]["pref_acc_clinician"] is not None for s in ("sft", "dpo"))

        evaluate_run(cfg, new_run, compare=old_run)
        tables = list((cfg.runs_dir / new_run / "eval").glob(f"compare_{old_run}*.md"))
        assert tables and "pref acc (clinician)" in tables[0].read_text(encoding="utf-8")

        # the running app lists the new run without a restart and can compare it with the old one
        assert f"{new_run}/dpo" in client.predict(api_name="/contestants")
        again = client.predict("头痛怎么办？", [f"{old_run}/dpo", f"{new_run}/dpo"], True, api_name="/compare")
        assert len(again["answers"]) == 2  # blind: the names come with the judgment
        revealed = client.predict(again["comparison_id"], "tie", api_name="/judge")["reveal"]
        assert set(revealed.values()) == {f"{old_run}/dpo", f"{new_run}/dpo"}
    finally:
        _stop(proc)
