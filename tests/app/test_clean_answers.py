"""Clean answers: whole characters and no control characters in the panels and the store, base and cpt
ending at the next 问：/答： turn, and an empty answer shown as such and asked again."""

from __future__ import annotations

from pathlib import Path

import pytest
from transformers.convert_slow_tokenizer import bytes_to_unicode

from app.arena import EMPTY_ANSWER, resolve_decoding
from app.serving.model_process import ModelProcess
from app.serving.pool import Generation, PanelStreamer, clean_answer
from app.serving.sampling import Decoding
from tests.app.test_app import _ask, _start, arena, session  # noqa: F401 - the Compare tab's fixtures
from training.modeling import stage_chain, stage_tokenizer
from training.recipes.base import train_bpe_tokenizer

GREEDY = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=64, seed=0)
RUN_ON = "多喝水，少吃盐。\n问：那运动呢？\n答：可以散步。"  # a plain answer running on into an invented turn


@pytest.fixture(scope="module")
def tokenizer():
    """A byte-level BPE tokenizer as the tiny and demo runs train one (every byte is a token of its own)."""
    return train_bpe_tokenizer(["高血压患者饮食上要注意什么？多喝水，少吃盐。"] * 20, vocab_size=400)


def _byte_ids(tokenizer, data: bytes) -> list[int]:
    """One token per byte, whether or not the bytes form characters."""
    alphabet = bytes_to_unicode()
    return tokenizer.convert_tokens_to_ids([alphabet[b] for b in data])


def _stream(tokenizer, ids_per_row: list[list[int]], chat: list[bool]):
    """Feed the rows' tokens to a streamer one step at a time; the texts seen after every step."""
    generation = Generation([f"run/{i}" for i in range(len(chat))], GREEDY)
    streamer = PanelStreamer(
        generation, list(range(len(chat))), [tokenizer] * len(chat), {tokenizer.eos_token_id}, chat
    )
    seen = []
    for step in zip(*ids_per_row):
        streamer.put([list(step)])
        seen.append([a.text for a in generation.answers])
    streamer.end()
    return generation.answers, seen, streamer


def test_characters_split_across_tokens_and_invalid_bytes_never_show_as_replacement_characters(tokenizer):
    # 你 and 好 one byte per token, a stray continuation byte, control characters, an incomplete tail at the end
    data = "你".encode() + b"\x80" + "\t好\x01".encode() + "\u0085\x15\n。".encode() + "医".encode()[:2]
    (answer,), seen, _ = _stream(tokenizer, [_byte_ids(tokenizer, data)], chat=[True])
    assert all("\ufffd" not in text for (text,) in seen), seen
    assert [text for (text,) in seen][2:4] == ["你", "你"]  # shown once whole, the stray byte never
    assert answer.done and answer.text == "你\t好\n。"


def test_control_characters_are_removed_but_newlines_and_tabs_kept():
    assert clean_answer("少\x00吃\x1b[31m盐\x7f\u0085\u009f\r\n\t多\ufffd喝水") == "少吃[31m盐\n\t多喝水"


def test_a_plain_stage_ends_at_the_next_question_and_a_chat_stage_goes_on(tokenizer):
    ids = tokenizer(RUN_ON, add_special_tokens=False)["input_ids"]
    (plain, chat), seen, _ = _stream(tokenizer, [ids, ids], chat=[False, True])
    assert plain.done and plain.text == "多喝水，少吃盐。"
    assert all("问：" not in texts[0] for texts in seen)
    assert chat.text == RUN_ON


def _replay(monkeypatch, tokenizer, texts: list[str]):
    """Model processes that answer every row with the next of ``texts`` (then end of sequence), a step at a
    time and stopping when the pool cancels; returns ``{model path: [(prompt ids per row, steps made, steps scripted)]}``."""
    made: dict[str, list] = {}
    answers = iter(texts)

    def generate(self, rows, decoding, pad_id, eos_ids, on_tokens):
        script = tokenizer(next(answers), add_special_tokens=False)["input_ids"] + [eos_ids[0]]
        steps = 0
        for token in script:
            steps += 1
            if on_tokens([[token] * len(rows)]):  # True: the pool stops this request
                break
        made.setdefault(self.path, []).append(([ids for _, ids in rows], steps, len(script)))

    monkeypatch.setattr(ModelProcess, "generate", generate)
    return made


def test_base_stops_at_the_next_question_in_the_compare_tab(arena, session, store, app_home, monkeypatch):
    home, run_id = app_home
    run_dir = home / "runs" / run_id
    tokenizer = stage_tokenizer(run_dir, stage_chain(run_dir, "base"))
    made = _replay(monkeypatch, tokenizer, [RUN_ON, RUN_ON])
    _start(arena, session, run_id, stages=("base", "sft"), blind=False)
    _ask(arena, session)
    assert [p.display[-1]["content"] for p in session.panels] == ["多喝水，少吃盐。", RUN_ON]
    stored = store.get_comparison(session.comparison_id)
    assert [r.text for r in stored.responses] == ["多喝水，少吃盐。", RUN_ON]
    (((base_prompt,), base_steps, script),) = (calls[0] for path, calls in made.items() if Path(path).name == "base")
    assert (
        tokenizer.decode(base_prompt) == "问：高血压患者饮食上要注意什么？\n答："
    )  # the plain format it was trained on
    assert base_steps < script  # generation stopped at the marker, not at the end


def test_an_empty_answer_is_shown_as_such_stored_empty_and_asked_again(arena, session, store, app_home, monkeypatch):
    home, run_id = app_home
    run_dir = home / "runs" / run_id
    tokenizer = stage_tokenizer(run_dir, stage_chain(run_dir, "cpt"))
    _replay(monkeypatch, tokenizer, ["\x01 \ufffd", "\x01 \ufffd", "多喝水。", "多喝水。"])
    _start(arena, session, run_id, stages=("base", "cpt"), blind=False)
    _ask(arena, session)
    assert [p.display[-1]["content"] for p in session.panels] == [EMPTY_ANSWER] * 2
    assert "(empty answer)" in EMPTY_ANSWER
    assert [r.text for r in store.get_comparison(session.comparison_id).responses] == ["", ""]
    earlier = session.comparison_id
    steps = list(arena.regenerate(session, resolve_decoding(arena.cfg.app.decoding)))
    assert steps[-1].comparison_id != earlier
    assert [p.display[-1]["content"] for p in session.panels] == ["多喝水。"] * 2


def test_the_compare_tab_says_an_answer_is_empty_and_regenerate_asks_again(
    arena, session, store, app_home, monkeypatch
):
    from app.main import build_app

    home, run_id = app_home
    run_dir = home / "runs" / run_id
    _replay(
        monkeypatch, stage_tokenizer(run_dir, stage_chain(run_dir, "cpt")), ["\x01", "多喝水。", "多喝水。", "少吃盐。"]
    )
    demo = build_app(arena.cfg, store=store, pool=arena.pool)
    _start(arena, session, run_id, stages=("base", "cpt"), blind=False)
    settings = (0.7, 0.9, 16, 5)  # temperature, top-p, max new tokens, seed

    shown, session = _ui(demo, "ask", session, "高血压患者饮食上要注意什么？", *settings)
    panels = {label: shown[f"chat-{label}"]["value"][-1]["content"] for label in "AB"}  # the models answer in any order
    assert sorted(panels.values()) == sorted([EMPTY_ANSWER, "多喝水。"])
    empty = next(label for label, text in panels.items() if text == EMPTY_ANSWER)
    assert f"{empty} 为空回答 (empty answer)" in shown["status"] and "Regenerate" in shown["status"]
    shown, session = _ui(demo, "ask_again", session, "", *settings)
    assert sorted(shown[f"chat-{label}"]["value"][-1]["content"] for label in "AB") == ["多喝水。", "少吃盐。"]
    assert "empty answer" not in shown["status"] and "answers complete" in shown["status"]
    assert sorted(r.text for r in store.get_comparison(session.comparison_id).responses) == ["多喝水。", "少吃盐。"]


def _ui(demo, name, *args):
    """Run the Compare tab's callback ``name`` as the browser does, to its last step; outputs by elem_id."""
    fn = next(f for f in demo.fns.values() if f.name == name)
    *_, out = fn.fn(*args)
    return {getattr(c, "elem_id", None): u for c, u in zip(fn.outputs, out)}, out[0]


def test_real_answers_of_every_stage_are_clean(arena, session, store, app_home):
    _start(arena, session, app_home[1], blind=False)
    _ask(arena, session, temperature=1.5, max_new_tokens=48, seed=3)
    for response in store.get_comparison(session.comparison_id).responses:
        assert clean_answer(response.text) == response.text, response
        if not response.checkpoint_id.endswith(("/sft", "/dpo")):
            assert "\n问：" not in response.text and "\n答：" not in response.text
