"""Contraindication warnings in the Compare tab (app/contraindications.py, docs/safety.md): a scripted answer
that recommends a drug CMeKG contraindicates for the condition the prompt states gets a warning under it,
citing the graph's entry, once the answer is complete; the warning is stored with the answer, names no
contestant (so blind mode shows it), and the leaderboard counts it per checkpoint."""

from __future__ import annotations

import random

from app.arena import Arena, ArenaSession, resolve_decoding
from app.contraindications import HEADING
from app.serving.pool import Answer
from app.tabs.leaderboard import summary_line
from core.config import load_config
from preference_store.repository import PreferenceStore

RISKY = "可以吃阿莫西林胶囊，每次一粒，多喝水。"  # CMeKG 阿莫西林胶囊 禁忌: 青霉素过敏及青霉素皮肤试验阳性患者禁用
SAFE = "青霉素过敏的人不要自行用药，请到医院就诊，由医生选择合适的药物。"


def scripted(monkeypatch, arena: Arena, texts: list[str]) -> None:
    """The pool's generation with the answers given: first nothing, then every answer complete."""

    class Scripted:
        def __init__(self, requests, decoding):
            self.answers = [Answer(r.contestant.checkpoint_id, text="", done=False) for r in requests]
            self.final = [
                Answer(r.contestant.checkpoint_id, text=t, done=True, n_tokens=5, latency_s=0.1)
                for r, t in zip(requests, texts)
            ]
            self.done = False

        def stream(self):
            yield self.answers
            self.answers[:] = self.final
            self.done = True
            yield self.answers

    monkeypatch.setattr(arena.pool, "generate", lambda requests, decoding, endpoints=None: Scripted(requests, decoding))


def test_a_recommended_contraindicated_drug_is_warned_stored_and_counted(app_home, make_pool, monkeypatch):
    home, run_id = app_home
    cfg = load_config("tiny")
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        scripted(monkeypatch, arena, [RISKY, SAFE])
        session = ArenaSession(annotator=store.demo_annotator(), notice_accepted=True)
        arena.start(session, [f"{run_id}/dpo", f"{run_id}/sft"], blind=True, rng=random.Random(0))
        shown = []
        for state in arena.ask(
            session, "我对青霉素过敏，嗓子疼能吃什么药？", resolve_decoding(cfg.app.decoding, seed=1)
        ):
            shown.append([p.display[-1]["content"] for p in state.panels])
        assert not any(HEADING in text for text in shown[0])  # nothing while the answers are coming
        final = {text.split("\n\n")[0]: text for text in shown[-1]}
        warned = final[RISKY]
        assert HEADING in warned and "CMeKG「阿莫西林胶囊」禁忌：青霉素过敏及青霉素皮肤试验阳性患者禁用" in warned
        assert HEADING not in final[SAFE]
        assert run_id not in warned and "dpo" not in warned and "sft" not in warned  # no contestant named (blind)
        stored = {r.text: (r.checkpoint_id, r.warnings) for r in store.get_comparison(session.comparison_id).responses}
        risky_checkpoint, warnings = stored[RISKY]
        assert len(warnings) == 1 and "阿莫西林胶囊" in warnings[0]
        assert stored[SAFE][1] == []
        board = store.leaderboard(rounds=10)
        assert board.warnings[risky_checkpoint] == (1, 1)
        other = next(c for c in board.warnings if c != risky_checkpoint)
        assert board.warnings[other] == (0, 1)
        assert f"{risky_checkpoint} 1/1 (100%)" in summary_line(board)
