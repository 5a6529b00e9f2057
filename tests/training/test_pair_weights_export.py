"""Pair weights from the store to the recipe: on planted overlap judgments (three reliable clinicians and one who
always votes against the truth), every exported bank pair carries ``weight``, the Dawid-Skene posterior of its
direction (not the plain agreement share); the builder carries it into ChiMed-DPO, where ``align.pair_weights:
agreement`` reads it (objective pairs weigh 1)."""

from __future__ import annotations

import json

import pytest

from core.config import load_config
from core.files import read_jsonl
from preference_store.exports.pairs import export_pairs
from preference_store.records import ComparisonIn, JudgmentIn, ResponseIn
from preference_store.statistics.agreement import FIRST_BETTER, SECOND_BETTER
from preference_store.statistics.reliability import CLASSES, dawid_skene
from tests.training.test_data_build import small_config
from training.data.build import build_chimed
from training.trainer.pairs import read_pairs
from training.trainer.weights import pair_weights

PROMPTS = [
    "高血压患者饮食上要注意什么？",
    "糖尿病有哪些常见症状？",
    "感冒要吃抗生素吗？",
    "失眠怎么办？",
    "孕妇能喝咖啡吗？",
]
SFT, DPO = "r1/sft", "r1/dpo"
RELIABLE, CARELESS = ("dr_a", "dr_b", "dr_c"), "dr_x"


def _truth(i: int) -> str:
    """The planted better checkpoint of prompt ``i``: dpo on most prompts, sft on the last two."""
    return DPO if i < 3 else SFT


@pytest.fixture
def planted(pref_store, chimed_home, tmp_path):
    """Every bank prompt judged by the three reliable clinicians (the truth) and the careless one (the opposite);
    returns (store, {bank prompt id: {annotator: winner}})."""
    bank = tmp_path / "bank.jsonl"
    bank.write_text("".join(json.dumps({"prompt": p}, ensure_ascii=False) + "\n" for p in PROMPTS), encoding="utf-8")
    pref_store.import_bank(bank)
    prompts = {p.prompt: p for p in pref_store.bank_prompts()}
    votes: dict[str, dict[str, str]] = {}
    for name in (*RELIABLE, CARELESS):
        me = pref_store.add_annotator(name, "a-long-test-password")
        for i, text in enumerate(PROMPTS):
            prompt = prompts[text]
            answers = [
                ResponseIn(SFT, f"{text}：多休息，观察病情。"),
                ResponseIn(DPO, f"{text}：应及时就医，明确病因。"),
            ]
            made = pref_store.record_comparison(ComparisonIn(me.id, prompt.messages, answers, bank_prompt_id=prompt.id))
            winner = _truth(i) if name in RELIABLE else ({SFT, DPO} - {_truth(i)}).pop()
            pref_store.submit_judgment(JudgmentIn(made.id, me.id, choice="A" if winner == SFT else "B"))
            votes.setdefault(prompt.id, {})[name] = winner
    return pref_store, votes


def test_exported_pairs_carry_the_dawid_skene_weight_into_chimed_dpo(planted, chimed_home):
    store, votes = planted
    # the expected weights, from the planted votes alone: units (prompt, first, second) with first = dpo
    first, second = sorted((SFT, DPO))
    units = {
        (prompt_id, first, second): {
            name: FIRST_BETTER if winner == first else SECOND_BETTER for name, winner in by_name.items()
        }
        for prompt_id, by_name in votes.items()
    }
    fit = dawid_skene(units)

    cfg = load_config("tiny", ["store.aggregate=all"])  # the careless clinician's outvoted pairs too
    out = cfg.collected_pairs_dir / "clinician-1.jsonl"
    export_pairs(cfg, out=out, store=store)
    records = read_jsonl(out)
    assert len(records) == 2 * len(PROMPTS)  # per prompt: the reliable direction and the careless one
    weights = {}
    for record in records:
        prov = record["provenance"]
        chosen, rejected = prov["chosen_checkpoint"], prov["rejected_checkpoint"]
        prompt_id = store.get_comparison(prov["comparison_id"]).bank_prompt_id
        posterior = fit.posteriors[(prompt_id, first, second)]
        expected = posterior[CLASSES.index(FIRST_BETTER if chosen == first else SECOND_BETTER)]
        assert record["weight"] == pytest.approx(float(expected), abs=1e-6)
        reliable = chosen == _truth(PROMPTS.index(record["prompt"][-1]["content"]))
        # three of four agree: the agreement share says 0.75, Dawid-Skene (the dissenter is always wrong) more
        assert prov["agreement"]["share"] == (0.75 if reliable else 0.25)
        assert (record["weight"] > 0.95) if reliable else (record["weight"] < 0.05)
        weights[record["pair_id"]] = record["weight"]
        assert rejected in {SFT, DPO} - {chosen}

    # the builder keeps each weight with its pair in ChiMed-DPO, and the recipe's reader sees it
    build = small_config()  # the tiny profile's sources, shrunk, plus the collected pairs
    build_chimed(build)
    pairs = read_pairs(build)
    clinician = {p["pair_id"]: p for p in pairs if p["source"] == "clinician"}
    assert {pid: p["weight"] for pid, p in clinician.items()} == weights
    read = dict(zip((p["pair_id"] for p in pairs), pair_weights(pairs, "agreement")))
    assert {pid: read[pid] for pid in clinician} == weights
    assert all(read[p["pair_id"]] == 1.0 for p in pairs if p["source"] != "clinician")  # objective pairs weigh 1
    assert pair_weights(pairs, "none") is None
