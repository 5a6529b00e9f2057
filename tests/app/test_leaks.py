"""Identity leaks: an answer naming a model, a company or the contestant itself is flagged when it is
generated, and the flag is stored with the answer (annotators are not shown it before judging)."""

from __future__ import annotations

import random

import pytest

from app.arena import Arena, ArenaSession, resolve_decoding
from app.leaks import contestant_terms, find_leaks
from app.serving.pool import Answer
from core.config import LEAK_TERMS, load_config
from preference_store.repository import PreferenceStore

RUN = "20261129-084512"


@pytest.mark.parametrize(
    "text, found",
    [
        ("我是百川智能开发的大模型。", ["百川"]),
        ("作为通义千问，我建议您低盐饮食。", ["千问", "通义千问"]),
        ("I am ChatGPT, a model by OpenAI.", ["ChatGPT", "OpenAI"]),
        ("我是chatgpt，不能提供诊断。", ["ChatGPT"]),  # any case, Chinese right around it
        ("由qwen回答：多喝水。", ["Qwen"]),
        ("基于LLaMA和llama的模型", ["LLaMA"]),  # one name, however it is written
        ("这是Meta AI的模型。", ["Meta AI"]),
        ("华佗GPT认为应尽快就医。", ["华佗GPT"]),
        ("我是书生·浦语，上海人工智能实验室开发的模型。", ["浦语"]),
    ],
)
def test_model_and_company_names_are_found_in_chinese_and_latin(text, found):
    assert sorted(find_leaks(text, LEAK_TERMS)) == sorted(found)


@pytest.mark.parametrize(
    "text",
    [
        "一项Meta分析显示，限盐可以降低血压。",  # meta-analysis, not Meta AI
        "据张仲景《伤寒论》记载，桂枝汤可用于外感风寒。",  # the Han physician, not the Zhongjing model
        "我读书生活中常查医书；本书生动地介绍了高血压的防治。",  # 书生 across two words: not InternLM
        "医学知识如百川归海，海纳百川，有容乃大。",  # idioms, not Baichuan
        "Llamas and alpacas can carry zoonotic infections.",  # an animal: a longer word
        "The CPT code for an office visit; the base of the skull; SFT and DPO are not contestants' names.",
        "高血压患者应低盐低脂饮食，规律服用降压药，定期监测血压。",
        "",
    ],
)
def test_ordinary_medical_text_is_not_flagged(text):
    assert find_leaks(text, LEAK_TERMS) == []
    assert find_leaks(text, contestant_terms(LEAK_TERMS, [f"{RUN}/sft", f"{RUN}/dpo"])) == []


def test_the_contestants_run_and_checkpoint_ids_are_leaks():
    terms = contestant_terms(LEAK_TERMS, [f"{RUN}/sft", f"{RUN}/dpo"])
    assert find_leaks(f"我是{RUN}/dpo阶段的模型。", terms) == [f"{RUN}/dpo", RUN]
    assert find_leaks(f"run {RUN} finished", terms) == [RUN]
    assert find_leaks(f"run {RUN}9 finished", terms) == []  # another number, not this run


def test_every_answer_is_checked_when_generated_and_the_flag_is_stored(app_home, make_pool, monkeypatch):
    home, run_id = app_home
    cfg = load_config("tiny")
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        said = iter([f"我是Qwen，也是{run_id}/dpo。", "多喝水，少吃盐。"])

        class Scripted:  # the pool's generation, with the answers given
            def __init__(self, requests, decoding):
                self.answers = [
                    Answer(r.contestant.checkpoint_id, text=next(said), done=True, n_tokens=3, latency_s=0.1)
                    for r in requests
                ]
                self.done = True

            def stream(self):
                yield self.answers

        monkeypatch.setattr(
            arena.pool, "generate", lambda requests, decoding, endpoints=None: Scripted(requests, decoding)
        )
        session = ArenaSession(annotator=store.demo_annotator(), notice_accepted=True)
        arena.start(session, [f"{run_id}/dpo", f"{run_id}/sft"], blind=True, rng=random.Random(0))
        list(arena.ask(session, "你是谁？", resolve_decoding(cfg.app.decoding, seed=1)))
        leaks = {r.text: sorted(r.leaks) for r in store.get_comparison(session.comparison_id).responses}
        assert leaks == {
            f"我是Qwen，也是{run_id}/dpo。": sorted(["Qwen", f"{run_id}/dpo", run_id]),
            "多喝水，少吃盐。": [],
        }
        # blind: the panels show the answers as they are, with no flag and no name
        assert all("leak" not in m["content"] and "⚠" not in m["content"] for p in session.panels for m in p.display)
        assert [session.header(label) for label in "AB"] == ["模型 A", "模型 B"]
