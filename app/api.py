"""The app's programmatic API (Gradio endpoints, callable with ``gradio_client``), for scripts and the
loop's tests: list contestants, run one comparison, judge it; work through the annotator's queue of
bank prompts and rate single answers.

    from gradio_client import Client
    client = Client("http://127.0.0.1:7860/")               # auth=("name", "password") with accounts
    ids = client.predict(api_name="/contestants")
    cmp = client.predict("高血压饮食注意什么？", ids[:2], True, api_name="/compare")   # answers A, B: no names
    out = client.predict(cmp["comparison_id"], "A", api_name="/judge")  # out["reveal"]: label -> checkpoint id
    item = client.predict(ids[:2], True, api_name="/queue_next")  # the next bank prompt, answered; progress
    client.predict(item["comparison_id"], "B", False, api_name="/rate")   # thumbs down on answer B

Every call is checked like the UI: the research-only notice must be accepted (``accept_notice``),
unknown checkpoint ids and bad prompts are refused, and the caller is the logged-in annotator (or "demo"
when no account exists). The browser's rules hold here too:

- Blind: ``/compare`` and ``/queue_next`` shuffle the contestants over the labels A-D as the Compare tab's blind
  mode does, and their results name no checkpoint (no id, run or stage; a failed panel's error is keyed by its
  label) until the caller has judged; ``/judge`` returns ``reveal``. An admin may ask for ``blind=False`` (the
  answers in the order given, with their checkpoint ids and leak flags); the comparison is then recorded as
  not blind, and its judgments stay out of the leaderboard and the training pairs unless
  ``store.admit_unblinded``. ``blind=False`` from anyone else is refused.
- One vote: one judgment per (annotator, comparison) and one rating per (annotator, comparison, label); a
  second one is refused ("already judged; ..."), with or without ``client_id``. The same ``client_id`` sent
  again (a retry) returns the stored one with ``duplicate`` true. ``revise=True`` replaces the caller's
  judgment (rating): the earlier one is kept as history, only the newest makes pairs.
- A caller judges and rates only the comparisons they recorded themselves (the store refuses the others').

Refusals raise gradio's error (``AppError`` in ``gradio_client``) and log one line (:mod:`app.refusals`).
The study's figures (:mod:`preference_store.study_figures`, the Leaderboard tab's numbers): ``/study_status`` (an
annotator gets their own progress, an admin everyone's, and whether the round's question is decided),
``/leaderboard`` (with the anytime-valid pairwise decisions, ``pairwise``), ``/agreement`` (each annotator's
Dawid-Skene reliability for admins only) and ``/compare_runs`` (the run-vs-run verdict, with "decided after N
judgments" and its interval) (interim results: while a study round is open, admins only unless ``study.interim_results`` is
everyone, as on the Leaderboard tab).

The guideline: once an admin has published one, ``/judge`` and ``/rate`` are refused until the caller has
acknowledged the version in force (``/acknowledge_guideline``, which returns its text and criteria), as the
Compare tab asks before the first judgment; each judgment and rating records that version, and ``/judge``'s
``scores`` ({label: {criterion: 1-5}}) are on its criteria. With only the built-in guideline, they are recorded
under it without an acknowledgement.

Only the endpoints of :data:`API_ENDPOINTS` are public: the UI's own callbacks are hidden from ``view_api()``
and from ``gradio_client`` (:func:`hide_ui_callbacks`).

Identifiers (:mod:`app.identifiers`): the text a caller sends, the prompt of ``/compare`` and the
``correction`` and ``reason`` of ``/judge`` and ``/rate``, is screened before any model sees it or the
store keeps it. With identifiers in it the call is refused with one line naming their categories
("包含身份信息 the text holds identifiers (检测到 found: 姓名 name ×1, 电话/传真 phone/fax ×1): nothing was sent
or stored; ..."), unless the caller passes ``redact=True``: then the redacted text is sent and stored
instead, and the result's ``identifiers`` says what was taken out ({category: n}; {} when nothing was).
``/queue_next`` sends no typed text (bank prompts are an admin's, kept redacted with
``store.redact_on_entry``); its ``identifiers`` is {}.

    client.predict("我叫李明，电话13812345678，头痛三天", ids[:2], True, api_name="/compare")  # refused
    made = client.predict("我叫李明，电话13812345678，头痛三天", ids[:2], True, redact=True, api_name="/compare")
    made["prompt"], made["identifiers"]   # "我叫[NAME]，电话[PHONE]，头痛三天", {"name": 1, "phone": 1}
"""

from __future__ import annotations

import gradio as gr

from app.arena import QUEUE_EMPTY, RESOLVED_TIE, Arena, ArenaSession, GuidelineUnread, resolve_decoding, score_values
from app.auth import identify
from app.contestants import available_contestants
from app.identifiers import as_sent
from app.loop import start_next_round
from app.notice import NOT_ACCEPTED
from app.refusals import refusal
from app.tabs.leaderboard import interim_withheld
from core.errors import UserError
from preference_store.records import PANEL_LABELS, Annotator, JudgmentIn, RatingIn
from preference_store.study_figures import (
    agreement_figures,
    leaderboard_figures,
    run_comparison_figures,
    status_figures,
)
from training.progress import format_progress, run_progress, watched_run

API_ENDPOINTS = (
    "contestants",
    "compare",
    "acknowledge_guideline",
    "judge",
    "queue_next",
    "rate",  # docs/api.md
    "study_status",
    "leaderboard",
    "agreement",
    "compare_runs",
    "training_status",
    "train_next_round",
)
UNBLIND_FOR_ADMINS = (
    "only admins may ask for an unblinded comparison (blind=False): leave blind on, the names "
    "come back with /judge's reveal"
)


def hide_ui_callbacks(demo: gr.Blocks) -> None:
    """Make every event of ``demo`` but :data:`API_ENDPOINTS` private: the browser still calls them, but they are
    not listed by ``view_api()`` and ``gradio_client`` does not call them (gradio has no Blocks-wide switch)."""
    for fn in demo.fns.values():
        if fn.api_name not in API_ENDPOINTS:
            fn.api_visibility = "private"
    demo.config = demo.get_config_file()  # the config the page and the clients read was made on exit


def check_blind(annotator: Annotator, blind) -> bool:
    """The blind setting a caller may have: anyone blind, only an admin not."""
    if not bool(blind) and not annotator.is_admin:
        raise UserError(UNBLIND_FOR_ADMINS)
    return bool(blind)


def build_api(arena: Arena, overrides: list[str] | None = None) -> None:
    """Register the endpoints ``/contestants``, ``/compare``, ``/acknowledge_guideline``, ``/judge``, ``/queue_next``,
    ``/rate``, the study's figures ``/study_status``, ``/leaderboard``, ``/agreement`` and ``/compare_runs``, and the
    runs' ``/training_status`` and ``/train_next_round`` (admins; ``overrides``: the app's config overrides, which
    the round gets too) on the current Blocks."""
    cfg, store = arena.cfg, arena.store
    d = cfg.app.decoding

    def contestants() -> list[str]:
        """Checkpoint ids that can be compared: every stage of every completed run, newest run first."""
        return [c.checkpoint_id for c in available_contestants(cfg)]

    def caller(request: gr.Request | None) -> Annotator | str | None:
        """Who is calling, for a refusal's log line: the annotator, else the name they logged in with."""
        username = getattr(request, "username", None)
        try:
            return identify(store, username)
        except UserError:
            return username

    def compare(
        prompt: str,
        checkpoints: list[str],
        accept_notice: bool = False,
        temperature: float = d.temperature,
        top_p: float = d.top_p,
        max_new_tokens: int = d.max_new_tokens,
        seed: int = d.seed,
        redact: bool = False,
        blind: bool = True,
        request: gr.Request = None,
    ) -> dict:
        """Answer ``prompt`` with 2-4 checkpoints, shuffled over the labels A-D, and record the comparison;
        returns its id, the prompt as sent, the answers by label (no checkpoint names until judged) and the
        identifiers redacted. A prompt with identifiers is refused unless ``redact``; ``blind=False`` (the
        answers in the order given, with their checkpoint ids) is for admins."""
        try:
            annotator = identify(store, getattr(request, "username", None))
            session = ArenaSession(annotator=annotator, notice_accepted=bool(accept_notice))
            arena.start(session, checkpoints, blind=check_blind(annotator, blind))
            decoding = resolve_decoding(
                d, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens, seed=seed
            )
            for _ in arena.ask(session, prompt, decoding, redact=bool(redact)):
                pass
            return recorded(session, decoding.seed)
        except UserError as err:
            raise refusal("/compare", caller(request), str(err)) from None

    def recorded(session: ArenaSession, seed: int) -> dict:
        """The recorded comparison as a caller may see it before judging: blind, by label only."""

        def named(label: str) -> str:
            return label if session.blind else session.panels[PANEL_LABELS.index(label)].checkpoint_id

        errors = {named(label): error for label, error in session.errors.items()}
        if session.comparison_id is None:
            raise UserError(f"fewer than two answers, nothing recorded: {errors}")
        stored = store.get_comparison(session.comparison_id)
        answers = [
            {"label": r.label, "text": r.text, "warnings": r.warnings}  # warnings name no contestant (docs/safety.md)
            if session.blind
            else {
                "label": r.label,
                "checkpoint_id": r.checkpoint_id,
                "text": r.text,
                "leaks": r.leaks,
                "warnings": r.warnings,
            }
            for r in stored.responses
        ]
        return {
            "comparison_id": stored.id,
            "blind": stored.blind,
            "seed": seed,
            "errors": errors,
            "prompt": session.last_prompt,
            "identifiers": dict(session.redacted),
            "answers": answers,
        }

    def acknowledge_guideline(version: int | None = None, request: gr.Request = None) -> dict:
        """Acknowledge the guideline in force, as the Compare tab's "我已阅读" button does; returns its version,
        text (Markdown) and 1-5 criteria (the keys ``/judge``'s ``scores`` use). Once an admin has published a
        guideline, ``/judge`` and ``/rate`` are refused until the caller has acknowledged the version in force, and
        record that version. ``version``: the one you read (refused when a newer one is in force meanwhile)."""
        try:
            annotator = identify(store, getattr(request, "username", None))
            if version is not None and (isinstance(version, bool) or not isinstance(version, int)):
                raise UserError(f"version must be a guideline version number, got {version!r}")
            session = ArenaSession(annotator=annotator)
            message = arena.acknowledge_guideline(session, version)
            guideline = store.guideline(session.guideline_version)
        except UserError as err:
            raise refusal("/acknowledge_guideline", caller(request), str(err)) from None
        return {
            "version": guideline.version,
            "text": guideline.text,
            "message": message,
            "criteria": [{"key": c.key, "name": c.name, "description": c.description} for c in guideline.criteria],
        }

    def judging_version(annotator: Annotator) -> int | None:
        """The guideline version a judgment or rating through the API is made under: the one in force, once the
        caller has acknowledged it (the browser's check); None (the version in force, unacknowledged, as before
        guidelines were published) while only the built-in default exists."""
        in_force = store.guideline()
        if in_force.author_id is None:
            return None
        try:
            return arena.acknowledged_guideline(annotator).version
        except GuidelineUnread:
            raise UserError(
                f"read the guideline (version {in_force.version}) and acknowledge it before judging: call "
                "/acknowledge_guideline (it returns the text)"
            ) from None

    def judge(
        comparison_id: str,
        choice: str | None = None,
        ranking: dict[str, int] | None = None,
        correction: str | None = None,
        reason: str | None = None,
        client_id: str | None = None,
        redact: bool = False,
        revise: bool = False,
        scores: dict[str, dict[str, int]] | None = None,
        request: gr.Request = None,
    ) -> dict:
        """Judge a recorded comparison, once: a choice (A/B/tie/both_bad), a ranking {label: place} or a
        correction, with optional 1-5 ``scores`` {label: {criterion: score}} on the guideline's criteria; returns
        ``reveal`` (label -> checkpoint id). A second judgment is refused unless ``revise`` (which replaces the
        first); the same ``client_id`` again returns the first with ``duplicate`` true. A correction or reason
        with identifiers is refused unless ``redact``. A refused judgment stores nothing (the comparison stays
        open: send a valid judgment of it)."""
        try:
            annotator = identify(store, getattr(request, "username", None))
            sent, check = as_sent(bool(redact), correction=correction or None, reason=reason or None)
            out = store.submit_judgment(
                JudgmentIn(
                    comparison_id,
                    annotator.id,
                    client_id=client_id or None,
                    choice=choice or None,
                    ranking=ranking or None,
                    correction=sent["correction"],
                    reason=sent["reason"],
                    scores=score_values(scores),
                    revise=bool(revise),
                    guideline_version=judging_version(annotator),
                )
            )
        except UserError as err:
            raise refusal("/judge", caller(request), str(err)) from None
        return {
            "judgment_id": out.id,
            "kind": out.kind,
            "pair_ids": list(out.pair_ids),
            "duplicate": out.duplicate,
            "scores": out.scores,
            "guideline_version": out.guideline_version,
            "reveal": store.get_comparison(comparison_id, annotator.id).reveal,
            "judgments_by_you": store.count_judgments(annotator.id),
            "identifiers": dict(check.counts),
        }

    def queue_next(
        checkpoints: list[str] | None = None,
        accept_notice: bool = False,
        blind: bool = True,
        regenerate: bool = False,
        request: gr.Request = None,
    ) -> dict:
        """The caller's next bank prompt (their open one first) and their progress; with 2-4 ``checkpoints``
        it is also answered (the shared queue decoding) and the comparison recorded, as ``/compare`` returns
        it (blind unless an admin asks for ``blind=False``). In a round whose contestants the admin fixed
        (``queue-round --contestants``) it is always answered by those: send no ``checkpoints`` (other ones
        are refused). ``assignment_id`` None and ``message`` when the queue is empty. ``resolved`` true (and
        ``message``) when the queue settled the answered prompt as a tie without the caller (``study.allocation:
        adaptive``, the two answers identical): ``/judge`` and ``/rate`` refuse it; call ``/queue_next`` again.
        Asked again, the open prompt gets the same answers; ``regenerate=True`` answers it anew with the
        prompt's next shared seed, as the Compare tab's regenerate button does (an empty answer, say): a new
        comparison, the earlier one stays unjudged. It is refused for a prompt not answered yet."""
        try:
            annotator = identify(store, getattr(request, "username", None))
            session = ArenaSession(annotator=annotator, notice_accepted=bool(accept_notice))
            answered = bool(checkpoints) or bool(arena.round_contestants())
            if regenerate and not answered:
                raise UserError("regenerate answers the open queue prompt again: send its checkpoints")
            if answered:
                assignment = arena.take_assignment(session, checkpoints, blind=check_blind(annotator, blind))
            elif not session.notice_accepted:
                raise UserError(NOT_ACCEPTED)
            else:
                assignment = store.next_assignment(session.annotator.id)
            out = {
                "assignment_id": None,
                "bank_prompt_id": None,
                "messages": [],
                "prompt": None,
                "message": QUEUE_EMPTY,
            }
            if assignment is not None:
                bank_prompt = assignment.bank_prompt
                out = {
                    "assignment_id": assignment.id,
                    "bank_prompt_id": bank_prompt.id,
                    "messages": [dict(m) for m in bank_prompt.messages],
                    "prompt": bank_prompt.prompt,
                    "split": bank_prompt.split,
                    "tags": list(bank_prompt.tags),
                    "message": "",
                    "resolved": False,
                }
                if answered:
                    decoding = (
                        arena.queue_decoding_again(assignment) if regenerate else arena.queue_decoding(bank_prompt.id)
                    )
                    for _ in arena.ask_queue(session, assignment, decoding):
                        pass
                    out |= recorded(session, decoding.seed)
                    if session.resolved is not None:  # identical answers, adaptive round: nothing to judge
                        out |= {"resolved": True, "message": RESOLVED_TIE}
            progress = store.queue_progress(session.annotator.id)
        except UserError as err:
            raise refusal("/queue_next", caller(request), str(err)) from None
        return out | {"progress": str(progress), "done": progress.done, "total": progress.total}

    def rate(
        comparison_id: str,
        label: str,
        up: bool,
        correction: str | None = None,
        reason: str | None = None,
        client_id: str | None = None,
        redact: bool = False,
        revise: bool = False,
        request: gr.Request = None,
    ) -> dict:
        """Thumbs up (``up`` true) or down on answer ``label`` of a comparison you recorded, once per answer
        (``revise`` replaces your rating), with an optional better answer and reason (with identifiers: refused
        unless ``redact``). Names nothing: a rated comparison can still be judged blind."""
        try:
            annotator = identify(store, getattr(request, "username", None))
            sent, check = as_sent(bool(redact), correction=correction or None, reason=reason or None)
            out = store.submit_rating(
                RatingIn(
                    comparison_id,
                    annotator.id,
                    label=label,
                    up=bool(up),
                    correction=sent["correction"],
                    reason=sent["reason"],
                    client_id=client_id or None,
                    revise=bool(revise),
                    guideline_version=judging_version(annotator),
                )
            )
            progress = store.queue_progress(annotator.id)
        except UserError as err:
            raise refusal("/rate", caller(request), str(err)) from None
        return {
            "rating_id": out.id,
            "label": out.label,
            "up": out.up,
            "duplicate": out.duplicate,
            "guideline_version": out.guideline_version,
            "progress": str(progress),
            "identifiers": dict(check.counts),
        }

    def study_status(request: gr.Request = None) -> dict:
        """The current queue round, the bank's size and each account's progress (``study status``): an admin
        gets every account, an annotator their own line only."""
        try:
            return status_figures(store, identify(store, getattr(request, "username", None)))
        except UserError as err:
            raise refusal("/study_status", caller(request), str(err)) from None

    def results_viewer(endpoint: str, request: gr.Request | None) -> Annotator:
        """The caller, when they may see the study's results: while a round is open admins only, unless
        ``study.interim_results`` is everyone (an assessor who sees them is biased); the Leaderboard tab's own
        rule (:func:`~app.tabs.leaderboard.interim_withheld`)."""
        try:
            annotator = identify(store, getattr(request, "username", None))
        except UserError as err:
            raise refusal(endpoint, caller(request), str(err)) from None
        withheld = interim_withheld(store, annotator, cfg.study.interim_results)
        if withheld is not None:
            raise refusal(
                endpoint,
                annotator,
                f"study round {withheld.number} is open: its interim results go to "
                "admins only (study.interim_results) until an admin closes it "
                "(queue-round --close)",
            )
        return annotator

    def study_figures(endpoint: str, request: gr.Request | None, bank_only: bool):
        """The leaderboard the study's figures come from, for whoever may see the results (:func:`results_viewer`)."""
        results_viewer(endpoint, request)
        return store.leaderboard(bank_only=bool(bank_only))

    def leaderboard(bank_only: bool = False, request: gr.Request = None) -> dict:
        """The Bradley-Terry ratings with 95% intervals, overall, length-controlled and per criterion, win
        rates, vote counts and mean scores (``study leaderboard``); while a round is open, admins only."""
        board = study_figures("/leaderboard", request, bank_only)
        return leaderboard_figures(board, store.settings.bootstrap_rounds)

    def agreement(bank_only: bool = False, request: gr.Request = None) -> dict:
        """Krippendorff's alpha per kind and criterion, each annotator against the others, the outlier screen
        and the position bias (``study agreement``); while a round is open, admins only. ``reliability``, each
        annotator's Dawid-Skene reliability, is filled for admins only (empty for an annotator)."""
        viewer = results_viewer("/agreement", request)
        board = store.leaderboard(bank_only=bool(bank_only))
        return agreement_figures(board, store.annotator_reliability() if viewer.is_admin else ())

    def compare_runs(
        new_run: str, old_run: str, split: str = "heldout", stage: str | None = None, request: gr.Request = None
    ) -> dict:
        """The clinicians' verdict on ``new_run`` against ``old_run`` on the bank prompts of ``split`` (heldout,
        train or all), as ``compare-runs`` gives it: with study.decisions anytime, better / worse / same / undecided
        with the win rate's interval and ``decided_after`` (the judgments when it was first reached); while a
        round is open, admins only."""
        viewer = results_viewer("/compare_runs", request)
        try:
            return run_comparison_figures(
                store.compare_runs(new_run, old_run, split=None if split == "all" else split, stage=stage or None)
            )
        except UserError as err:
            raise refusal("/compare_runs", viewer, str(err)) from None

    def training_status(run_id: str | None = None) -> dict:
        """The live state of ``run_id`` (default: the run in training, else the newest unfinished one, else the newest), as
        ``./launch.sh status`` prints it: {"run_id", "state", "error", "text"}; {} when there is none."""
        run_id = run_id or watched_run(cfg)
        if not run_id or not (cfg.runs_dir / str(run_id) / "manifest.json").is_file():
            return {}
        progress = run_progress(cfg, str(run_id))
        return {
            "run_id": progress.run_id,
            "state": progress.state,
            "error": progress.error,
            "text": format_progress(progress),
        }

    def train_next_round(request: gr.Request = None) -> dict:
        """Admins: start the loop's next round in the background (the Runs tab's "train the next round");
        refused for everyone else and while a training of this home runs. {"run_id", "plan"}."""
        annotator = caller(request)
        try:
            training, plan = start_next_round(
                cfg, store, annotator if isinstance(annotator, Annotator) else None, list(overrides or [])
            )
        except UserError as err:
            raise refusal("/train_next_round", annotator, str(err)) from None
        return {"run_id": training.run_id, "plan": plan.summary()}

    limit = cfg.app.concurrent_comparisons
    gr.api(contestants, api_name="contestants")
    gr.api(compare, api_name="compare", concurrency_limit=limit, concurrency_id="generate")
    gr.api(acknowledge_guideline, api_name="acknowledge_guideline")
    gr.api(judge, api_name="judge")
    gr.api(queue_next, api_name="queue_next", concurrency_limit=limit, concurrency_id="generate")
    gr.api(rate, api_name="rate")
    gr.api(study_status, api_name="study_status")
    gr.api(leaderboard, api_name="leaderboard")
    gr.api(agreement, api_name="agreement")
    gr.api(compare_runs, api_name="compare_runs")
    gr.api(training_status, api_name="training_status")
    gr.api(train_next_round, api_name="train_next_round")
