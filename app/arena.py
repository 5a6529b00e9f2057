"""The arena itself, without any UI: a session's conversation with 2-4 contestants, blind panels,
judgments, all saved through the preference store.

A session (one browser tab) holds plain data (:class:`ArenaSession`); :class:`Arena` does the work:

    arena.start(session, ["RUN/base", "RUN/cpt", "RUN/sft", "RUN/dpo"], blind=True)
    for _ in arena.ask(session, "高血压患者饮食上要注意什么？", decoding):   # answers stream in
        ...                                                               # session.panels[i].display
    arena.rank(session, {"A": 2, "B": 1, "C": 4, "D": 3})                 # names are revealed after it
    arena.correct(session, "一个更好的回答……")

Each panel keeps its own history (the model sees its own earlier answers). The conversation stored
with each comparison, which becomes the DPO prompt, has the user's turns and, after each, the best
answer known for it: the clinician's correction, else the winner of the vote or ranking, else panel
A's answer. Blind mode hides the names as 模型 A-D and shuffles the panel order at the start of each
conversation; once names are revealed, the rest of that conversation is recorded as not blind.
"""

from __future__ import annotations

import hashlib
import html
import random
from collections.abc import Iterator
from dataclasses import dataclass, field

from app.contestants import resolve_contestants
from app.notice import NOT_ACCEPTED
from app.serving.pool import Answer, ModelPool, PanelRequest
from app.serving.sampling import Decoding
from preference_store.records import (
    MAX_CONTESTANTS,
    MIN_CONTESTANTS,
    PANEL_LABELS,
    Annotator,
    ComparisonIn,
    JudgmentIn,
    JudgmentOut,
    ResponseIn,
)
from preference_store.repository import PreferenceStore
from training.config import Config, DecodingConfig
from training.errors import UserError

CHOICE_NAMES = {"A": "A 更好 A is better", "B": "B 更好 B is better", "tie": "平局 tie", "both_bad": "都不好 both bad"}
# what a panel shows for an answer with nothing in it once cleaned (it is stored as ""); Regenerate asks again
EMPTY_ANSWER = "空回答 (empty answer)"
STILL_GENERATING = "还在生成 / the answers are still coming: wait for them, or start a new conversation"
_seeds = random.SystemRandom()


@dataclass
class Panel:
    """One contestant's side of the conversation."""

    checkpoint_id: str
    history: list[dict] = field(default_factory=list)  # what the model saw and said (user/assistant turns)
    display: list[dict] = field(default_factory=list)  # what the panel shows: escaped text, errors included


@dataclass
class ArenaSession:
    """Everything one browser session's Compare tab remembers (plain data, kept in a ``gr.State``)."""

    annotator: Annotator | None = None
    notice_accepted: bool = False
    panels: list[Panel] = field(default_factory=list)
    blind: bool = True
    revealed: bool = False
    conversation_id: str | None = None
    reference: list[dict] = field(default_factory=list)  # the conversation stored with each comparison
    comparison_id: str | None = None  # the newest recorded comparison, the one judgments refer to
    judgeable: list[str] = field(default_factory=list)  # panel labels (A-D) with an answer in it
    voted: bool = False  # a vote or ranking was stored for that comparison
    errors: dict[str, str] = field(default_factory=dict)  # panel label -> why its newest answer failed
    last_prompt: str | None = None
    undo: tuple | None = None  # lengths before the newest turn, for regenerate
    epoch: int = 0  # bumped by every new or cleared conversation; an older answer stream then stops
    busy: bool = False  # answers are being generated for this session

    @property
    def labels(self) -> list[str]:
        return list(PANEL_LABELS[: len(self.panels)])

    def header(self, label: str) -> str:
        """The panel title: 模型 A while blind, with the checkpoint once it may be known."""
        panel = self.panels[PANEL_LABELS.index(label)]
        if self.blind and not self.revealed:
            return f"模型 {label}"
        return f"模型 {label} · {panel.checkpoint_id}"


def as_display_text(text: str) -> str:
    """Text for a chat panel: HTML and script are shown as typed, never run."""
    return html.escape(text, quote=False)


def resolve_decoding(settings: DecodingConfig | None = None, *, temperature=None, top_p=None, max_new_tokens=None,
                     seed=None) -> Decoding:
    """A :class:`Decoding` from the settings a user chose (missing ones, and the limits, from ``settings``);
    seed -1 draws one."""
    settings = settings or DecodingConfig()
    temperature = settings.temperature if temperature is None else temperature
    top_p = settings.top_p if top_p is None else top_p
    max_new_tokens = settings.max_new_tokens if max_new_tokens is None else max_new_tokens
    seed = settings.seed if seed is None else seed
    # number boxes hand over floats: accept 24.0 as 24, but not 24.5
    max_new_tokens, seed = (int(v) if isinstance(v, float) and v.is_integer() else v for v in (max_new_tokens, seed))
    if seed == -1:
        seed = _seeds.randrange(2**31)
    return Decoding(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed, limits=settings)


class Arena:
    """The Compare tab's work: contestants, answers through the model pool, judgments into the store."""

    def __init__(self, cfg: Config, store: PreferenceStore, pool: ModelPool) -> None:
        self.cfg = cfg
        self.store = store
        self.pool = pool

    # --- contestants and conversations ---------------------------------------------------------
    def start(self, session: ArenaSession, checkpoint_ids: list[str], blind: bool,
              rng: random.Random | None = None) -> None:
        """A new conversation with these 2-4 contestants; blind mode shuffles their panels."""
        ids = list(dict.fromkeys(checkpoint_ids or []))
        if not MIN_CONTESTANTS <= len(ids) <= MAX_CONTESTANTS:
            raise UserError(f"choose {MIN_CONTESTANTS}-{MAX_CONTESTANTS} different contestants "
                            f"(you chose {len(ids)})")
        for contestant in resolve_contestants(self.cfg, ids):  # refuses unknown checkpoint ids
            # training registers a run's checkpoints when it completes; a store opened later (another
            # CHIMED_DATABASE_URL) learns them here, so a completed run can always be compared
            if not self.store.is_known_checkpoint(contestant.checkpoint_id):
                self.store.register_checkpoints(contestant.run_id, [contestant.stage])
        if blind:
            (rng or _seeds).shuffle(ids)
        session.panels = [Panel(cid) for cid in ids]
        session.blind = bool(blind)
        session.revealed = False
        self.clear(session)

    def clear(self, session: ArenaSession) -> None:
        """Empty the panels and start a new conversation with the same contestants in the same places."""
        for panel in session.panels:
            panel.history.clear()
            panel.display.clear()
        session.epoch += 1
        session.busy = False
        session.conversation_id = None
        session.reference = []
        session.comparison_id = None
        session.judgeable = []
        session.voted = False
        session.last_prompt = None
        session.undo = None

    def check_prompt(self, prompt) -> str:
        """The prompt if it can be sent; a one-line reason otherwise."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("请输入问题 / the prompt is empty: type a question first")
        limit = self.cfg.app.max_prompt_chars
        if len(prompt) > limit:
            raise UserError(f"问题过长 / the prompt has {len(prompt)} characters, over the limit of {limit} "
                            "(app.max_prompt_chars): shorten it")
        return prompt.strip()

    # --- answers -------------------------------------------------------------------------------
    def ask(self, session: ArenaSession, prompt: str, decoding: Decoding) -> Iterator[ArenaSession]:
        """Send ``prompt`` to every panel; yields the session each time the answers grow.

        When every panel is done the comparison is recorded (panels that failed are left out; with
        fewer than two answers nothing can be judged and nothing is recorded).
        """
        self._check_ready(session)
        prompt = self.check_prompt(prompt)
        if session.busy:
            raise UserError(STILL_GENERATING)
        contestants = resolve_contestants(self.cfg, [p.checkpoint_id for p in session.panels])
        session.undo = ([len(p.history) for p in session.panels], [len(p.display) for p in session.panels],
                        len(session.reference))
        session.comparison_id, session.judgeable, session.voted = None, [], False
        session.last_prompt = prompt
        user = {"role": "user", "content": prompt}
        for panel in session.panels:
            panel.display.append({"role": "user", "content": as_display_text(prompt)})
            panel.display.append({"role": "assistant", "content": ""})
        panels, epoch = list(session.panels), session.epoch
        generation = self.pool.generate(
            [PanelRequest(c, p.history + [user]) for c, p in zip(contestants, panels)], decoding)
        answers: list[Answer] = generation.answers
        session.busy = True
        try:
            for answers in generation.stream():
                if session.epoch != epoch:  # a new conversation started meanwhile: drop this one
                    return
                for panel, answer in zip(panels, answers):
                    if panel.display:
                        panel.display[-1] = {"role": "assistant", "content": self._shown(answer)}
                yield session
        finally:
            if not generation.done:  # the browser went away or the conversation changed
                generation.cancel()
            if session.epoch == epoch:
                session.busy = False
        if session.epoch != epoch:
            return
        for panel, answer in zip(session.panels, answers):
            if answer.error is None:
                panel.history += [user, {"role": "assistant", "content": answer.text}]
        self._record(session, user, answers, decoding)
        yield session

    def regenerate(self, session: ArenaSession, decoding: Decoding) -> Iterator[ArenaSession]:
        """Answer the newest prompt again (a new comparison; the earlier one stays in the store)."""
        if session.busy:
            raise UserError(STILL_GENERATING)
        if session.undo is None or session.last_prompt is None:
            raise UserError("nothing to regenerate yet: send a prompt first")
        histories, displays, reference = session.undo
        for panel, h, d in zip(session.panels, histories, displays):
            del panel.history[h:], panel.display[d:]
        del session.reference[reference:]
        yield from self.ask(session, session.last_prompt, decoding)

    def _check_ready(self, session: ArenaSession) -> None:
        if not session.notice_accepted:
            raise UserError(NOT_ACCEPTED)
        if session.annotator is None:
            raise UserError("no annotator for this session: reload the page (and log in)")
        if not session.panels:
            raise UserError(f"choose {MIN_CONTESTANTS}-{MAX_CONTESTANTS} contestants first")

    @staticmethod
    def _shown(answer: Answer) -> str:
        if answer.error is not None:
            return f"⚠ 生成失败 / generation failed: {as_display_text(answer.error)}"
        if answer.done and not answer.text.strip():
            return EMPTY_ANSWER
        text = as_display_text(answer.text)
        return text if answer.done else text + " ▌"

    def _record(self, session: ArenaSession, user: dict, answers: list[Answer], decoding: Decoding) -> None:
        ok = [(label, answer) for label, answer in zip(session.labels, answers) if answer.error is None]
        session.errors = {label: a.error for label, a in zip(session.labels, answers) if a.error is not None}
        session.reference.append(user)
        session.reference.append({"role": "assistant", "content": ok[0][1].text if ok else ""})
        if len(ok) < MIN_CONTESTANTS:
            return
        comparison = self.store.record_comparison(ComparisonIn(
            annotator_id=session.annotator.id,
            messages=[dict(m) for m in session.reference[:-1]],
            responses=[ResponseIn(a.checkpoint_id, a.text, decoding.as_dict(), seed=decoding.seed,
                                  latency_s=a.latency_s, n_tokens=a.n_tokens, serving=a.serving) for _, a in ok],
            conversation_id=session.conversation_id,
            blind=session.blind and not session.revealed,
        ))
        session.conversation_id = comparison.conversation_id
        session.comparison_id = comparison.id
        session.judgeable = [label for label, _ in ok]

    # --- judgments -----------------------------------------------------------------------------
    def vote(self, session: ArenaSession, choice: str, reason: str | None = None,
             scores: dict[str, dict] | None = None) -> str:
        """A / B / tie / both_bad on a two-answer comparison."""
        self._check_judgeable(session, vote=True)
        if len(session.judgeable) != 2:
            raise UserError(f"this comparison has {len(session.judgeable)} answers: rank them instead")
        store_choice = self._to_store_label(session, choice) if choice in PANEL_LABELS else choice
        out = self._submit(session, "vote", reason, scores, choice=store_choice)
        session.voted = True
        if choice in PANEL_LABELS:
            self._set_reference(session, self._answer_text(session, choice))
        return self._confirm(session, out, CHOICE_NAMES.get(choice, choice))

    def rank(self, session: ArenaSession, places: dict[str, int | None], reason: str | None = None,
             scores: dict[str, dict] | None = None) -> str:
        """A full ranking (1 = best) of the answers of the newest comparison."""
        self._check_judgeable(session, vote=True)
        missing = [label for label in session.judgeable if places.get(label) in (None, "")]
        if missing:
            raise UserError(f"give answer {', '.join(missing)} a place: every answer needs one")
        ranking = {self._to_store_label(session, label): _as_int(places[label], f"place of answer {label}")
                   for label in session.judgeable}
        out = self._submit(session, "vote", reason, scores, ranking=ranking)
        session.voted = True
        best = min(session.judgeable, key=lambda label: ranking[self._to_store_label(session, label)])
        self._set_reference(session, self._answer_text(session, best))
        order = " > ".join(sorted(session.judgeable, key=lambda label: ranking[self._to_store_label(session, label)]))
        return self._confirm(session, out, f"排序 ranking {order}")

    def correct(self, session: ArenaSession, text: str, reason: str | None = None,
                scores: dict[str, dict] | None = None) -> str:
        """A better answer written by the clinician, chosen over every model answer."""
        self._check_judgeable(session, vote=False)
        if not isinstance(text, str) or not text.strip():
            raise UserError("the better answer is empty: write it in the box first")
        digest = hashlib.sha256(text.strip().encode()).hexdigest()[:16]
        out = self._submit(session, f"correction-{digest}", reason, scores, correction=text.strip())
        self._set_reference(session, text.strip())
        return self._confirm(session, out, "改写的回答 corrected answer")

    def _check_judgeable(self, session: ArenaSession, vote: bool) -> None:
        if session.annotator is None:
            raise UserError("no annotator for this session: reload the page (and log in)")
        if session.comparison_id is None:
            raise UserError("nothing to judge yet: send a prompt and wait for at least two answers")
        if vote and session.voted:
            raise UserError("this comparison is judged already: send a new prompt (or write a better answer)")

    def _to_store_label(self, session: ArenaSession, label: str) -> str:
        """Panel label on screen -> label in the store (failed panels are not in the stored comparison)."""
        if label not in session.judgeable:
            raise UserError(f"answer {label!r} is not part of this comparison ({', '.join(session.judgeable)})")
        return PANEL_LABELS[session.judgeable.index(label)]

    def _store_scores(self, session: ArenaSession, scores: dict[str, dict] | None) -> dict[str, dict[str, int]]:
        """{panel on screen: {criterion: value}} -> the store's labels, blanks left out (the store checks the
        criteria against the guideline in force)."""
        out = {}
        for label, values in (scores or {}).items():
            given = {c: _as_int(v, f"{c} score of answer {label}") for c, v in values.items() if v not in (None, "")}
            if given and label in session.judgeable:
                out[self._to_store_label(session, label)] = given
        return out

    def _submit(self, session: ArenaSession, kind: str, reason, scores, **judgment) -> JudgmentOut:
        reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
        return self.store.submit_judgment(JudgmentIn(
            comparison_id=session.comparison_id, annotator_id=session.annotator.id,
            # one vote per comparison and one record per distinct correction, however often it is clicked
            client_id=f"{session.comparison_id}:{kind}", reason=reason,
            scores=self._store_scores(session, scores), **judgment))

    def _answer_text(self, session: ArenaSession, label: str) -> str:
        return session.panels[PANEL_LABELS.index(label)].history[-1]["content"]

    @staticmethod
    def _set_reference(session: ArenaSession, text: str) -> None:
        if session.reference:
            session.reference[-1] = {"role": "assistant", "content": text}

    def _confirm(self, session: ArenaSession, out: JudgmentOut, what: str) -> str:
        session.revealed = True
        count = self.store.count_judgments(session.annotator.id)
        again = "（重复提交，未再次记录 / already recorded, not stored twice）" if out.duplicate else ""
        reveal = "; ".join(f"{label} = {session.panels[PANEL_LABELS.index(label)].checkpoint_id}"
                           for label in session.labels)
        return (f"✓ 已记录 Recorded: {what}{again} — {len(out.pair_ids)} 个偏好对 pairs. "
                f"您已完成 {count} 次评判 / you have made {count} judgments. 揭晓 Revealed: {reveal}")


def _as_int(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return value
