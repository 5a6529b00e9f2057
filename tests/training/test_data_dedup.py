"""Deduplication (exact + MinHash LSH near duplicates) and the decontamination checks."""

from __future__ import annotations

from core.config import load_config
from training.data.decontam import drop_eval_questions, eval_prompts, overlap_report
from training.data.dedup import deduplicate, normalize

ARTICLE = (
    "高血压是以体循环动脉血压持续升高为主要特征的慢性疾病，长期血压控制不佳可损害心、脑、肾等器官。"
    "高血压患者应坚持低盐饮食，规律服用降压药物，定期监测血压，并戒烟限酒、适量运动、控制体重。"
)
OTHER = (
    "糖尿病是一组以高血糖为特征的代谢性疾病，典型症状为多饮、多尿、多食和体重减轻。"
    "糖尿病患者应控制饮食、坚持运动，在医生指导下使用降糖药物或胰岛素，并定期检查眼底和肾功能。"
)


def cpt(text: str, source: str = "user_text") -> dict:
    return {"text": text, "source": source}


def test_exact_duplicates_ignore_spacing_punctuation_and_width():
    assert normalize("高血压， 患者 应低盐饮食！") == normalize("高血压,患者应低盐饮食!")
    records = [cpt(ARTICLE), cpt(" " + ARTICLE.replace("，", ",") + "\n"), cpt(OTHER)]
    kept, counts = deduplicate(records, load_config("tiny").data, "cpt")
    assert kept == [records[0], records[2]]
    assert counts == {"exact": 1, "near": 0, "kept": 2}


def test_near_duplicates_are_removed_and_distinct_texts_kept():
    near = ARTICLE.replace("定期监测血压", "定期测量血压")  # two characters changed
    records = [cpt(ARTICLE), cpt(OTHER), cpt(near)]
    kept, counts = deduplicate(records, load_config("tiny").data, "cpt")
    assert kept == records[:2]
    assert counts["near"] == 1 and counts["exact"] == 0


def test_threshold_decides_what_is_near():
    half = ARTICLE[: len(ARTICLE) // 2] + OTHER[len(OTHER) // 2 :]  # shares about half its shingles
    data = load_config("tiny").data
    kept, counts = deduplicate([cpt(ARTICLE), cpt(half)], data, "cpt")
    assert len(kept) == 2 and counts["near"] == 0
    data.minhash_threshold = 0.2
    kept, counts = deduplicate([cpt(ARTICLE), cpt(half)], data, "cpt")
    assert len(kept) == 1 and counts["near"] == 1


def test_clinician_pairs_are_kept_whole():
    prompt = [{"role": "user", "content": "胸口疼痛持续半小时不缓解怎么办？"}]
    best = "持续胸痛可能是急性冠脉综合征等急症的表现，请立即拨打急救电话或尽快到医院急诊就诊，不要自行驾车。"

    def pair(rejected: str, source: str = "clinician") -> dict:
        return {
            "prompt": prompt,
            "chosen": [{"role": "assistant", "content": best}],
            "rejected": [{"role": "assistant", "content": rejected}],
            "source": source,
            "pair_id": rejected,
        }

    # the store's export already dropped exact duplicates; a ranking's pairs share prompt and chosen by
    # design, and answers that differ in punctuation only must keep their own pair ids for the manifest
    ranking = [pair("休息一下就会好。"), pair("休息一下就好。"), pair("休息一下就会好！")]
    kept, counts = deduplicate(ranking, load_config("tiny").data, "dpo", exempt=lambda r: r["source"] == "clinician")
    assert kept == ranking and counts == {"exact": 0, "near": 0, "kept": 3}
    # the same records from an imported file are deduplicated as usual
    imported = [dict(r, source="imported") for r in ranking]
    kept, counts = deduplicate(imported, load_config("tiny").data, "dpo", exempt=lambda r: r["source"] == "clinician")
    assert kept == imported[:1] and counts["exact"] == 1 and counts["near"] == 1


def test_training_records_that_ask_an_eval_question_are_dropped():
    exam = [{"question": "下列哪一项是糖尿病的常见症状？", "options": {"A": "多饮"}, "answer": "A"}]
    qa = [{"messages": [{"role": "user", "content": "糖尿病有哪些常见症状？"}], "reference": "多饮、多尿。"}]
    sft = [
        {
            "messages": [
                {"role": "user", "content": "糖尿病有哪些常见症状？"},
                {"role": "assistant", "content": "多饮、多尿。"},
            ],
            "source": "alpaca",
        },
        {
            "messages": [
                {"role": "user", "content": "高血压有哪些常见症状？"},
                {"role": "assistant", "content": "头痛、头晕。"},
            ],
            "source": "alpaca",
        },
    ]
    dpo = [
        {
            "prompt": [{"role": "user", "content": "下列哪一项是糖尿病的常见症状？"}],
            "chosen": [{"role": "assistant", "content": "多饮"}],
            "rejected": [{"role": "assistant", "content": "咳嗽"}],
        }
    ]
    prompts = eval_prompts(exam, qa)
    assert drop_eval_questions(sft, prompts) == (sft[1:], 1)
    assert drop_eval_questions(dpo, prompts) == ([], 1)


def test_overlap_report_counts_eval_items_sharing_ngrams_with_each_split():
    general = [{"id": "g0", "text": ARTICLE}, {"id": "g1", "text": "完全不同的一段文字，与训练数据没有任何重合之处。"}]
    splits = {
        "cpt": [cpt(OTHER), cpt(ARTICLE[10:60])],
        "sft": [{"messages": [{"role": "user", "content": OTHER}, {"role": "assistant", "content": "好的。"}]}],
    }
    report = overlap_report({"general": general}, splits, n=13)
    assert report["general"]["cpt"] == {"items": 1, "of": 2, "share": 0.5}
    assert report["general"]["sft"]["items"] == 0
