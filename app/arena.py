"""The arena itself, without any UI: a session's conversation with 2-4 contestants, blind panels,
judgments, all saved through the preference store.

A session (one browser tab) holds plain data (:class:`ArenaSession`); :class:`Arena` does the work:

    arena.start(session, ["RUN/base", "RUN/cpt", "RUN/sft", "RUN/dpo"], blind=True)
    for _ in arena.ask(session, "高血压患者饮食上要注意什么？", decoding):   # answers stream in
        ...                                                               # session.panels[i].display
    arena.rank(session, {"A": 2, "B": 1, "C": 4, "D": 3})                 # names are revealed after it
    arena.correct(session, "一个更好的回答……")

The annotator's queue of shared bank prompts (:mod:`preference_store.repository.bank`) goes through the
same session:

    assignment = arena.take_assignment(session, checkpoint_ids, blind=True)   # None: the queue is empty
    for _ in arena.ask_queue(session, assignment):    # the bank prompt, its conversation so far as context
        ...
    arena.rate(session, "B", up=False, reason="剂量错误")                    # or vote / rank / correct

Whatever a clinician types (a prompt, a better answer, a reason) is screened for identifiers first
(:mod:`app.identifiers`): with any found nothing is sent and :class:`~app.identifiers.IdentifiersFound`
names their categories; the same call with ``redact=True`` sends the redacted text (the models never see
the rest). The tab keeps the entry meanwhile in ``session.held``.

Judging needs the guideline in force acknowledged first (:meth:`Arena.acknowledge_guideline`); each
judgment records its version, and the 1-5 scores are on its criteria. A comparison is judged once, by a vote,
a ranking or a better answer (the store keeps one judgment per annotator and comparison, whichever way it
came, browser or API); the same button clicked twice is recorded once. Each answer is rated once.

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

from app.contestants import identifying_names, register_contestants, resolve_contestants
from app.contraindications import answer_warnings, warning_block
from app.identifiers import EntryCheck, as_sent
from app.leaks import contestant_terms, find_leaks
from app.notice import NOT_ACCEPTED
from app.serving.endpoints import EndpointClients
from app.serving.pool import Answer, ModelPool, PanelRequest
from app.serving.sampling import Decoding
from core.config import Config, DecodingConfig
from core.errors import UserError
from preference_store.records import (
    MAX_CONTESTANTS,
    MIN_CONTESTANTS,
    PANEL_LABELS,
    Annotator,
    Assignment,
    ComparisonIn,
    Criterion,
    Guideline,
    JudgmentIn,
    JudgmentOut,
    QueueProgress,
    RatingIn,
    ResponseIn,
)
from preference_store.repository import PreferenceStore
from preference_store.repository.judgments import AlreadyJudged

CHOICE_NAMES = {"A": "A 更好 A is better", "B": "B 更好 B is better", "tie": "平局 tie", "both_bad": "都不好 both bad"}
# what a panel shows for an answer with nothing in it once cleaned (it is stored as ""); Regenerate asks again
EMPTY_ANSWER = "空回答 (empty answer)"
STILL_GENERATING = "还在生成 / the answers are still coming: wait for them, or start a new conversation"
QUEUE_EMPTY = "队列已完成 / your queue is empty: nothing left to judge"
JUDGED_ONCE = (
    "already judged; 每个对比只评判一次 / this comparison is judged already (one judgment per comparison: a "
    "vote, a ranking or a better answer): send a new prompt"
)
ACK_LABEL = "我已阅读 I have read the guideline"
# a queue prompt the store resolved without a clinician (study.allocation: adaptive, two identical answers)
RESOLVED_TIE = (
    "两个回答完全相同，本题已自动记为平局，无需您评判 / the two answers are identical: this prompt was resolved as a "
    "tie without you, nothing to judge; take the next prompt (下一题 Next from my queue)"
)

_seeds = random.SystemRandom()


class GuidelineUnread(UserError):
    """Judging before the guideline in force was acknowledged: the app shows the guideline."""


@dataclass
class Panel:
    """One contestant's side of the conversation."""

    checkpoint_id: str
    history: list[dict] = field(default_factory=list)  # what the model saw and said (user/assistant turns)
    display: list[dict] = field(default_factory=list)  # what the panel shows: escaped text, errors included


@dataclass
class HeldEntry:
    """What a clinician sent that holds identifiers, held back (nothing sent, nothing stored) until they choose
    "redact and send" or "edit": the action, what was typed and found (``check``), and the action's other inputs
    (decoding settings, choice, places, scores, label ...)."""

    action: str  # "ask" | "vote" | "rank" | "correct" | "rate"
    check: EntryCheck
    inputs: dict = field(default_factory=dict)


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
    voted: bool = False  # a judgment (vote, ranking or better answer) was stored for that comparison
    errors: dict[str, str] = field(default_factory=dict)  # panel label -> why its newest answer failed
    last_prompt: str | None = None
    undo: tuple | None = None  # lengths before the newest turn, for regenerate
    epoch: int = 0  # bumped by every new or cleared conversation; an older answer stream then stops
    busy: bool = False  # answers are being generated for this session
    # the newest prompt came from the annotator's queue: its bank prompt and assignment (None = free chat),
    # and how many times it was asked (regenerate asks again with the next seed of the prompt)
    bank_prompt_id: str | None = None
    assignment_id: str | None = None
    queue_attempt: int = 0
    # the newest comparison was resolved by the queue as a tie without a clinician (the store's reason; None:
    # it is to be judged): the answers are shown, but no judgment or rating of it is taken
    resolved: str | None = None
    # the guideline whose criteria the score rows show (read at page load; None = not read yet)
    guideline_version: int | None = None
    criteria: tuple[Criterion, ...] = ()
    held: HeldEntry | None = None  # an entry with identifiers, waiting for "redact and send" or "edit"
    redacted: dict[str, int] = field(default_factory=dict)  # category -> identifiers redacted from the newest prompt

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


def resolve_decoding(
    settings: DecodingConfig | None = None, *, temperature=None, top_p=None, max_new_tokens=None, seed=None
) -> Decoding:
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
        self.endpoints = (
            EndpointClients()
        )  # the endpoint contestants' clients (app.serving.endpoints), made when first used

    # --- contestants and conversations ---------------------------------------------------------
    def start(
        self, session: ArenaSession, checkpoint_ids: list[str], blind: bool, rng: random.Random | None = None
    ) -> None:
        """A new conversation with these 2-4 contestants; blind mode shuffles their panels."""
        ids = list(dict.fromkeys(checkpoint_ids or []))
        if not MIN_CONTESTANTS <= len(ids) <= MAX_CONTESTANTS:
            raise UserError(f"choose {MIN_CONTESTANTS}-{MAX_CONTESTANTS} different contestants (you chose {len(ids)})")
        register_contestants(self.cfg, self.store, ids)  # refuses unknown checkpoint ids
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
        session.bank_prompt_id = session.assignment_id = None
        session.queue_attempt = 0
        session.resolved = None
        session.held = None
        session.redacted = {}

    def check_prompt(self, prompt, bank: bool = False) -> str:
        """The prompt if it can be sent; a one-line reason otherwise (a bank prompt, chosen by an admin,
        is not held to the typed prompts' length limit)."""
        if not isinstance(prompt, str) or not prompt.strip():
            raise UserError("请输入问题 / the prompt is empty: type a question first")
        limit = self.cfg.app.max_prompt_chars
        if len(prompt) > limit and not bank:
            raise UserError(
                f"问题过长 / the prompt has {len(prompt)} characters, over the limit of {limit} "
                "(app.max_prompt_chars): shorten it"
            )
        return prompt.strip()

    # --- answers -------------------------------------------------------------------------------
    def ask(
        self,
        session: ArenaSession,
        prompt: str,
        decoding: Decoding,
        *,
        context: list[dict] | None = None,
        bank_prompt_id: str | None = None,
        assignment_id: str | None = None,
        redact: bool = False,
    ) -> Iterator[ArenaSession]:
        """Send ``prompt`` to every panel; yields the session each time the answers grow.

        ``context``: the conversation so far (user/assistant/system messages) to start a new conversation
        with, as every panel's history (a bank prompt's earlier turns). ``bank_prompt_id`` and
        ``assignment_id``: the prompt comes from the annotator's queue; the comparison records them.

        A typed prompt with identifiers raises :class:`~app.identifiers.IdentifiersFound` before anything
        happens, unless ``redact``: then the models see (and the store keeps) the redacted prompt, and
        ``session.redacted`` counts what was taken out. A bank prompt was chosen by an admin (and is kept
        redacted with ``store.redact_on_entry``).

        When every panel is done the comparison is recorded (panels that failed are left out; with
        fewer than two answers nothing can be judged and nothing is recorded). Every answer is checked
        for names that give the contestant away (:mod:`app.leaks`); what it finds is stored with it.
        """
        self._check_ready(session)
        prompt = self.check_prompt(prompt, bank=bank_prompt_id is not None)
        if session.busy:
            raise UserError(STILL_GENERATING)
        redacted = {}
        if bank_prompt_id is None:
            sent, check = as_sent(redact, prompt=prompt)
            prompt, redacted = sent["prompt"], check.counts
        contestants = resolve_contestants(self.cfg, [p.checkpoint_id for p in session.panels])
        if context:
            if session.reference or any(p.history for p in session.panels):
                raise UserError("a conversation so far can only start a new conversation")
            for panel in session.panels:
                panel.history = [{"role": m["role"], "content": m["content"]} for m in context]
                panel.display = [_display_message(m) for m in context]
            session.reference = [{"role": m["role"], "content": m["content"]} for m in context]
        session.undo = (
            [len(p.history) for p in session.panels],
            [len(p.display) for p in session.panels],
            len(session.reference),
        )
        session.comparison_id, session.judgeable, session.voted, session.resolved = None, [], False, None
        session.last_prompt = prompt
        session.bank_prompt_id, session.assignment_id = bank_prompt_id, assignment_id
        session.redacted = redacted
        user = {"role": "user", "content": prompt}
        for panel in session.panels:
            panel.display.append({"role": "user", "content": as_display_text(prompt)})
            panel.display.append({"role": "assistant", "content": ""})
        panels, epoch = list(session.panels), session.epoch
        generation = self.pool.generate(
            [PanelRequest(c, p.history + [user]) for c, p in zip(contestants, panels)], decoding, self.endpoints
        )
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
        # the finished answers' contraindication warnings, shown under them and stored with them (docs/safety.md)
        warned = [[] if a.error is not None else answer_warnings(session.reference + [user], a.text) for a in answers]
        for panel, answer, found in zip(session.panels, answers, warned):
            if answer.error is None:
                panel.history += [user, {"role": "assistant", "content": answer.text}]
            if found and panel.display:
                shown = self._shown(answer) + as_display_text(warning_block(found))
                panel.display[-1] = {"role": "assistant", "content": shown}
        self._record(session, user, answers, decoding, warned)
        yield session

    def regenerate(self, session: ArenaSession, decoding: Decoding) -> Iterator[ArenaSession]:
        """Answer the newest prompt again (a new comparison; the earlier one stays in the store)."""
        if session.busy:
            raise UserError(STILL_GENERATING)
        if session.undo is None or session.last_prompt is None:
            raise UserError("nothing to regenerate yet: send a prompt first")
        if session.resolved is not None:
            raise UserError(RESOLVED_TIE)
        histories, displays, reference = session.undo
        for panel, h, d in zip(session.panels, histories, displays):
            del panel.history[h:], panel.display[d:]
        del session.reference[reference:]
        if session.bank_prompt_id is not None:  # a queue prompt: its next shared seed, not the one given
            session.queue_attempt += 1
            decoding = self.queue_decoding(session.bank_prompt_id, session.queue_attempt)
        # the newest prompt was screened when it was sent (and redacted if it had to be)
        yield from self.ask(
            session,
            session.last_prompt,
            decoding,
            bank_prompt_id=session.bank_prompt_id,
            assignment_id=session.assignment_id,
            redact=True,
        )

    # --- the annotator's queue of bank prompts ------------------------------------------------------
    def take_assignment(
        self, session: ArenaSession, checkpoint_ids: list[str] | None, blind: bool, rng: random.Random | None = None
    ) -> Assignment | None:
        """The annotator's next queue prompt (their open one first), with a new conversation started with
        these contestants; None when nothing is left for them (:data:`QUEUE_EMPTY`; the panels stay as they
        are). Once :meth:`ask_queue` has answered it, ``session.resolved`` says whether the queue settled it as a
        tie without the clinician (:data:`RESOLVED_TIE`: identical answers in an adaptive round; it is not judged,
        and the next prompt may be taken). In a round whose contestants the admin fixed (:meth:`round_contestants`) those
        answer it (in an adaptive round of 3-4, the two of them the queue chose for the prompt, ``assignment.contestants``):
        ``checkpoint_ids`` may be left out, and other ones are refused, as is ``blind`` off in a blind round."""
        if not session.notice_accepted:
            raise UserError(NOT_ACCEPTED)
        if session.annotator is None:
            raise UserError("no annotator for this session: reload the page (and log in)")
        if session.busy:
            raise UserError(STILL_GENERATING)
        ids = list(dict.fromkeys(checkpoint_ids or []))
        round_ = self.store.queue_round_definition()
        if round_.contestants:
            if ids and set(ids) != set(round_.contestants):
                raise UserError(
                    f"queue round {round_.number} compares the contestants the admin chose "
                    f"({len(round_.contestants)} of them): send no checkpoints for the queue"
                )
            if round_.blind and not blind:
                raise UserError(f"queue round {round_.number} is blind for everyone: leave blind on")
            ids = list(round_.contestants)
        if not MIN_CONTESTANTS <= len(ids) <= MAX_CONTESTANTS:  # checked before a prompt is taken
            raise UserError(f"choose {MIN_CONTESTANTS}-{MAX_CONTESTANTS} different contestants (you chose {len(ids)})")
        resolve_contestants(self.cfg, ids)
        assignment = self.store.next_assignment(session.annotator.id)
        if assignment is not None:
            # in an adaptive round of 3-4 the queue chose the pair this prompt shows (active sampling)
            self.start(session, list(assignment.contestants) or ids, blind, rng)
        return assignment

    def round_contestants(self) -> list[str]:
        """The contestants the admin fixed for the current queue round ([]: each annotator chooses)."""
        return list(self.store.queue_round_definition().contestants)

    def ask_queue(
        self, session: ArenaSession, assignment: Assignment, decoding: Decoding | None = None
    ) -> Iterator[ArenaSession]:
        """Ask the assignment's bank prompt in a new conversation, its earlier turns as every panel's history;
        the comparison records the bank prompt and the assignment. ``decoding`` None = the shared queue
        decoding (:meth:`queue_decoding`)."""
        if session.busy:
            raise UserError(STILL_GENERATING)
        if session.annotator is None or assignment.annotator_id != session.annotator.id:
            raise UserError("this queue prompt is assigned to another annotator")
        prompt = assignment.bank_prompt
        self.clear(session)
        yield from self.ask(
            session,
            prompt.prompt,
            decoding or self.queue_decoding(prompt.id),
            context=prompt.messages[:-1],
            bank_prompt_id=prompt.id,
            assignment_id=assignment.id,
        )

    def queue_decoding(self, bank_prompt_id: str, attempt: int = 0) -> Decoding:
        """How a queue prompt is answered: the configured decoding (``app.decoding``, not this browser's
        sliders) with a seed derived from the bank prompt's id.

        Agreement between annotators means something only if they judged the same answers: each row is
        sampled from its own seeded generator (:mod:`app.serving.sampling`), so the k annotators of a bank
        prompt who pick the same contestants see the same answers, whatever their panel order, and their
        verdicts differ only where their judgment does. ``attempt`` (a regenerate) moves to the prompt's
        next seed, the same for everyone.
        """
        digest = hashlib.sha256(f"{bank_prompt_id}:{attempt}".encode()).digest()
        seed = int.from_bytes(digest[:4], "big") % 2**31
        return resolve_decoding(self.cfg.app.decoding, seed=seed)

    def queue_decoding_again(self, assignment: Assignment) -> Decoding:
        """How an open queue prompt is answered again (the API's regenerate): the prompt's next shared seed,
        counted by the comparisons already recorded for the assignment, whichever route recorded them."""
        attempt = self.store.assignment_answered(assignment.id)
        if attempt == 0:
            raise UserError(
                "nothing to regenerate yet: this queue prompt has not been answered (ask without regenerate)"
            )
        return self.queue_decoding(assignment.bank_prompt.id, attempt)

    def queue_progress(self, session: ArenaSession) -> QueueProgress | None:
        """The annotator's "12 / 40" (None without an annotator)."""
        if session.annotator is None:
            return None
        return self.store.queue_progress(session.annotator.id)

    # --- the guideline -------------------------------------------------------------------------------
    def load_guideline(self, session: ArenaSession) -> Guideline:
        """The guideline in force; the session's score rows follow its criteria from now on."""
        guideline = self.store.guideline()
        session.guideline_version, session.criteria = guideline.version, guideline.criteria
        return guideline

    def guideline_to_read(self, session: ArenaSession) -> Guideline | None:
        """The guideline in force when this annotator has not acknowledged it yet (never, or an older version)."""
        if session.annotator is None:
            return None
        guideline = self.store.guideline()
        seen = self.store.guideline_seen(session.annotator.id)
        return guideline if seen is None or seen < guideline.version else None

    def acknowledge_guideline(self, session: ArenaSession, version: int | None = None) -> str:
        """The annotator has read the guideline (``version`` None = the one in force)."""
        if session.annotator is None:
            raise UserError("no annotator for this session: reload the page (and log in)")
        guideline = self.load_guideline(session)
        version = guideline.version if version is None else version
        if version != guideline.version:
            raise UserError(f"the guideline is now version {guideline.version}: read it again")
        self.store.mark_guideline_seen(session.annotator.id, version)
        return f"✓ 已阅读评判准则第 {version} 版 / guideline version {version} acknowledged"

    def acknowledged_guideline(self, annotator: Annotator) -> Guideline:
        """The guideline in force, once ``annotator`` has acknowledged it (:meth:`acknowledge_guideline`);
        :class:`GuidelineUnread` before that. The browser and the API judge under the version it returns."""
        in_force = self.store.guideline()
        seen = self.store.guideline_seen(annotator.id)
        if seen is None or seen < in_force.version:
            raise GuidelineUnread(
                f"请先阅读评判准则（第 {in_force.version} 版）并点击“{ACK_LABEL}” / read the "
                f"guideline (version {in_force.version}) and acknowledge it before judging"
            )
        return in_force

    def _check_guideline(self, session: ArenaSession) -> int:
        """The version in force, once this annotator has acknowledged it and the score rows follow it."""
        in_force = self.store.guideline()
        changed = session.guideline_version not in (None, in_force.version)
        session.guideline_version, session.criteria = in_force.version, in_force.criteria
        self.acknowledged_guideline(session.annotator)
        if changed:
            raise UserError(
                f"评判准则已更新为第 {in_force.version} 版 / the guideline is now version "
                f"{in_force.version}: the score rows follow its criteria; check them and judge again"
            )
        return in_force.version

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

    def _record(
        self, session: ArenaSession, user: dict, answers: list[Answer], decoding: Decoding, warned: list[list[str]]
    ) -> None:
        ok = [(label, answer) for label, answer in zip(session.labels, answers) if answer.error is None]
        warnings = [found for answer, found in zip(answers, warned) if answer.error is None]
        session.errors = {label: a.error for label, a in zip(session.labels, answers) if a.error is not None}
        session.reference.append(user)
        session.reference.append({"role": "assistant", "content": ok[0][1].text if ok else ""})
        if len(ok) < MIN_CONTESTANTS:
            return
        ids = [p.checkpoint_id for p in session.panels]
        names = identifying_names(self.cfg, ids)  # an endpoint's name and model
        terms = contestant_terms([*self.cfg.app.leak_terms, *names], ids)
        comparison = self.store.record_comparison(
            ComparisonIn(
                annotator_id=session.annotator.id,
                messages=[dict(m) for m in session.reference[:-1]],
                responses=[
                    ResponseIn(
                        a.checkpoint_id,
                        a.text,
                        decoding.as_dict(),
                        seed=decoding.seed,
                        latency_s=a.latency_s,
                        n_tokens=a.n_tokens,
                        serving=a.serving,
                        leaks=find_leaks(a.text, terms),
                        warnings=found,
                    )
                    for (_, a), found in zip(ok, warnings)
                ],
                conversation_id=session.conversation_id,
                blind=session.blind and not session.revealed,
                bank_prompt_id=session.bank_prompt_id,
                assignment_id=session.assignment_id,
            )
        )
        session.conversation_id = comparison.conversation_id
        session.comparison_id = comparison.id
        session.judgeable = [label for label, _ in ok]
        session.resolved = comparison.resolved  # identical answers in an adaptive round: settled, not judged
        if not session.blind:  # names shown from the start: the study's audit log says who ran it (issue 36)
            self.store.record_event(
                "comparison.unblinded",
                actor=session.annotator.name,
                target=comparison.id,
                detail={"checkpoints": [a.checkpoint_id for _, a in ok]},
            )

    # --- judgments -----------------------------------------------------------------------------
    def vote(
        self,
        session: ArenaSession,
        choice: str,
        reason: str | None = None,
        scores: dict[str, dict] | None = None,
        redact: bool = False,
    ) -> str:
        """A / B / tie / both_bad on a two-answer comparison (a reason with identifiers: see :meth:`ask`)."""
        self._check_judgeable(session, vote=True)
        if len(session.judgeable) != 2:
            raise UserError(f"this comparison has {len(session.judgeable)} answers: rank them instead")
        reason = as_sent(redact, reason=reason)[0]["reason"]
        store_choice = self._to_store_label(session, choice) if choice in PANEL_LABELS else choice
        out = self._submit(session, "vote", reason, scores, choice=store_choice)
        session.voted = True
        if choice in PANEL_LABELS:
            self._set_reference(session, self._answer_text(session, choice))
        return self._confirm(session, out, CHOICE_NAMES.get(choice, choice))

    def rank(
        self,
        session: ArenaSession,
        places: dict[str, int | None],
        reason: str | None = None,
        scores: dict[str, dict] | None = None,
        redact: bool = False,
    ) -> str:
        """A full ranking (1 = best) of the answers of the newest comparison."""
        self._check_judgeable(session, vote=True)
        missing = [label for label in session.judgeable if places.get(label) in (None, "")]
        if missing:
            raise UserError(f"give answer {', '.join(missing)} a place: every answer needs one")
        reason = as_sent(redact, reason=reason)[0]["reason"]
        ranking = {
            self._to_store_label(session, label): _as_int(places[label], f"place of answer {label}")
            for label in session.judgeable
        }
        out = self._submit(session, "vote", reason, scores, ranking=ranking)
        session.voted = True
        best = min(session.judgeable, key=lambda label: ranking[self._to_store_label(session, label)])
        self._set_reference(session, self._answer_text(session, best))
        order = " > ".join(sorted(session.judgeable, key=lambda label: ranking[self._to_store_label(session, label)]))
        return self._confirm(session, out, f"排序 ranking {order}")

    def correct(
        self,
        session: ArenaSession,
        text: str,
        reason: str | None = None,
        scores: dict[str, dict] | None = None,
        redact: bool = False,
    ) -> str:
        """A better answer written by the clinician, chosen over every model answer (identifiers in it or in
        the reason: see :meth:`ask`)."""
        self._check_judgeable(session, vote=False)
        if not isinstance(text, str) or not text.strip():
            raise UserError("the better answer is empty: write it in the box first")
        sent, _ = as_sent(redact, correction=text, reason=reason)
        text, reason = sent["correction"], sent["reason"]
        digest = hashlib.sha256(text.strip().encode()).hexdigest()[:16]
        out = self._submit(session, f"correction-{digest}", reason, scores, correction=text.strip())
        session.voted = True
        self._set_reference(session, text.strip())
        return self._confirm(session, out, "改写的回答 corrected answer")

    def rate(
        self,
        session: ArenaSession,
        label: str,
        up: bool,
        correction: str | None = None,
        reason: str | None = None,
        redact: bool = False,
    ) -> str:
        """Thumbs up or down on one answer of a queue comparison, instead of (or besides) comparing; an
        optional better answer and reason. The names stay hidden: the answers can still be compared."""
        version = self._check_judgeable(session, vote=False)
        if session.assignment_id is None:
            raise UserError(
                "单个回答评分用于队列题 / rating one answer is for queue prompts: take one with "
                "下一题 Next from my queue"
            )
        store_label = self._to_store_label(session, label)
        sent, _ = as_sent(redact, correction=correction, reason=reason)
        correction, reason = sent["correction"], sent["reason"]
        correction = correction.strip() if isinstance(correction, str) and correction.strip() else None
        reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
        digest = hashlib.sha256((correction or "").encode()).hexdigest()[:16]
        try:
            out = self.store.submit_rating(
                RatingIn(
                    comparison_id=session.comparison_id,
                    annotator_id=session.annotator.id,
                    label=store_label,
                    up=bool(up),
                    correction=correction,
                    reason=reason,
                    guideline_version=version,
                    # the same click twice is one record; another verdict on the answer is refused by the store
                    client_id=f"{session.comparison_id}:rating-{store_label}-{'up' if up else 'down'}-{digest}",
                )
            )
        except AlreadyJudged:
            raise UserError(
                f"already rated; 回答 {label} 已评分 / you rated answer {label} already: one rating per answer"
            ) from None
        again = "（重复提交，未再次记录 / already recorded, not stored twice）" if out.duplicate else ""
        thumb = "👍 好 good" if up else "👎 差 bad"
        extra = " + 改写的回答 corrected answer" if correction else ""
        return f"✓ 已记录 Recorded: 回答 answer {label} {thumb}{extra}{again}."

    def _check_judgeable(self, session: ArenaSession, vote: bool) -> int:
        """The guideline version the judgment is made under, once it may be made."""
        if session.annotator is None:
            raise UserError("no annotator for this session: reload the page (and log in)")
        if session.comparison_id is None:
            raise UserError("nothing to judge yet: send a prompt and wait for at least two answers")
        if session.resolved is not None:
            raise UserError(RESOLVED_TIE)
        if vote and session.voted:
            raise UserError(JUDGED_ONCE)
        return self._check_guideline(session)

    def _to_store_label(self, session: ArenaSession, label: str) -> str:
        """Panel label on screen -> label in the store (failed panels are not in the stored comparison)."""
        if label not in session.judgeable:
            raise UserError(f"answer {label!r} is not part of this comparison ({', '.join(session.judgeable)})")
        return PANEL_LABELS[session.judgeable.index(label)]

    def _store_scores(self, session: ArenaSession, scores: dict[str, dict] | None) -> dict[str, dict[str, int]]:
        """{panel on screen: {criterion: value}} -> the store's labels, blanks left out (the store checks the
        criteria against the guideline in force)."""
        return {
            self._to_store_label(session, label): given
            for label, given in score_values(scores).items()
            if label in session.judgeable
        }

    def _submit(self, session: ArenaSession, kind: str, reason, scores, **judgment) -> JudgmentOut:
        reason = reason.strip() if isinstance(reason, str) and reason.strip() else None
        try:
            return self.store.submit_judgment(
                JudgmentIn(
                    comparison_id=session.comparison_id,
                    annotator_id=session.annotator.id,
                    # the same button clicked twice is one record; any other judgment of it is refused by the store
                    client_id=f"{session.comparison_id}:{kind}",
                    reason=reason,
                    scores=self._store_scores(session, scores),
                    guideline_version=session.guideline_version,
                    **judgment,
                )
            )
        except AlreadyJudged:
            session.voted = True  # judged already (here, or through the API): the vote buttons go
            raise UserError(JUDGED_ONCE) from None

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
        reveal = "; ".join(
            f"{label} = {session.panels[PANEL_LABELS.index(label)].checkpoint_id}" for label in session.labels
        )
        return (
            f"✓ 已记录 Recorded: {what}{again} — {len(out.pair_ids)} 个偏好对 pairs. "
            f"您已完成 {count} 次评判 / you have made {count} judgments. 揭晓 Revealed: {reveal}"
        )


def _display_message(message: dict) -> dict:
    """A message of a conversation so far as a panel shows it (a system message as a note from the user)."""
    if message["role"] == "system":
        return {"role": "user", "content": f"〔系统 system〕 {as_display_text(message['content'])}"}
    return {"role": message["role"], "content": as_display_text(message["content"])}


def score_values(scores: dict[str, dict] | None) -> dict[str, dict[str, int]]:
    """{label: {criterion: value}} as the score radios send them -> whole numbers, blank scores (and answers
    left unscored) left out; the store checks the criteria and the 1-5 range against the guideline."""
    if scores is None:
        return {}
    if not isinstance(scores, dict) or not all(isinstance(v, dict) for v in scores.values()):
        raise UserError("scores map answer labels to {criterion: 1-5}, e.g. {'A': {'safety': 5}, 'B': {'safety': 2}}")
    out = {}
    for label, values in scores.items():
        given = {c: _as_int(v, f"{c} score of answer {label}") for c, v in values.items() if v not in (None, "")}
        if given:
            out[label] = given
    return out


def _as_int(value, what: str) -> int:
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise UserError(f"{what} must be a whole number, got {value!r}")
    return value
