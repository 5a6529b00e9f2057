"""The Compare tab's judging: the guideline to acknowledge, a vote, a ranking, a better answer, or 👍/👎 on one
answer. Typed text with identifiers is held back (the identifier box shows what was found) instead of stored.
"""

from __future__ import annotations

import gradio as gr

from app.arena import Arena, ArenaSession, GuidelineUnread, HeldEntry
from app.identifiers import IdentifiersFound
from app.tabs.compare.layout import CompareLayout
from app.tabs.compare.views import (
    criteria_updates,
    guideline_shown,
    held_view,
    progress_markdown,
    render,
    scores_from,
    status_line,
)
from core.errors import UserError
from preference_store.records import PANEL_LABELS


class Judging:
    """The judging controls' callbacks for one tab (``ui``), through ``arena``."""

    def __init__(self, arena: Arena, ui: CompareLayout) -> None:
        self.arena = arena
        self.ui = ui

    # --- the guideline -------------------------------------------------------------------------
    def acknowledge_guideline(self, state: ArenaSession):
        try:
            message = self.arena.acknowledge_guideline(state)
        except UserError as err:
            return state, status_line(str(err), ok=False), *guideline_shown(self.arena, True), *criteria_updates(state)
        return state, message, *guideline_shown(self.arena, False), *criteria_updates(state)

    # --- judging -------------------------------------------------------------------------------
    def judge_with(self, state: ArenaSession, action: str, inputs: dict, texts: dict, redact: bool) -> str:
        """Run one judgment ("vote", "rank", "correct" or "rate") with the typed ``texts`` (correction, reason)."""
        arena = self.arena
        if action == "vote":
            return arena.vote(state, inputs["choice"], texts.get("reason"), inputs["scores"], redact=redact)
        if action == "rank":
            return arena.rank(state, inputs["places"], texts.get("reason"), inputs["scores"], redact=redact)
        if action == "correct":
            return arena.correct(state, texts.get("correction"), texts.get("reason"), inputs["scores"], redact=redact)
        return arena.rate(
            state, inputs["label"], inputs["up"], texts.get("correction"), texts.get("reason"), redact=redact
        )

    def judged(self, state: ArenaSession, action: str, inputs: dict, texts: dict, redact: bool = False):
        """Outputs of ``judge_outputs``: the confirmation, or the reason it was refused (the form stays as it
        is, so the clinician can fix one field; the guideline is shown when it must be read first). Typed text
        with identifiers is held back: it leaves its box and the identifier box shows what was found."""
        clear_correction, reset_form = action in ("correct", "rate"), action != "rate"
        state.held = None  # a new judgment replaces one held back
        try:
            message = self.judge_with(state, action, inputs, texts, redact)
        except UserError as err:
            unchanged = [gr.update() for _ in self.ui.view]
            unchanged[self.ui.radio_slice] = criteria_updates(state)  # a newer guideline may have new criteria
            shown = guideline_shown(self.arena) if isinstance(err, GuidelineUnread) else [gr.update(), gr.update()]
            boxes = [gr.update(), gr.update()]
            if isinstance(err, IdentifiersFound):
                state.held = HeldEntry(action, err.check, inputs)
                boxes = ["" if field in err.check.typed else gr.update() for field in ("reason", "correction")]
            return (
                state,
                status_line(str(err), ok=False),
                *boxes,
                *shown,
                progress_markdown(self.arena, state),
                *unchanged,
                *held_view(state),
            )
        return (
            state,
            message,
            "",
            "" if clear_correction else gr.update(),
            gr.update(visible=False),
            gr.update(),
            progress_markdown(self.arena, state),
            *render(state, reset_form=reset_form),
            *held_view(state),
        )

    def wire(self, session: gr.State) -> None:
        """Bind the guideline's and the judging controls' events."""
        ui, judged = self.ui, self.judged
        judge_outputs = ui.judge_outputs(session)
        ui.open_guideline.click(lambda: guideline_shown(self.arena, True), None, [ui.guideline_box, ui.guideline_text])
        # the public /acknowledge_guideline is the API's (app.api): this browser event keeps a private name of its own
        ui.acknowledge.click(
            self.acknowledge_guideline,
            [session],
            [session, ui.status, ui.guideline_box, ui.guideline_text, *ui.score_radios],
            api_name="acknowledge_guideline_in_tab",
        )

        for choice, button in ui.vote_buttons.items():

            def vote(state, why, *scores, choice=choice):
                return judged(
                    state, "vote", {"choice": choice, "scores": scores_from(state, list(scores))}, {"reason": why}
                )

            button.click(vote, [session, ui.reason, *ui.score_radios], judge_outputs)

        def submit_ranking(state, why, *values):
            chosen = dict(zip(PANEL_LABELS, values[: len(PANEL_LABELS)]))
            return judged(
                state,
                "rank",
                {"places": chosen, "scores": scores_from(state, list(values[len(PANEL_LABELS) :]))},
                {"reason": why},
            )

        ui.rank.click(submit_ranking, [session, ui.reason, *ui.places, *ui.score_radios], judge_outputs)

        def submit_better(state, text, why, *scores):
            return judged(
                state, "correct", {"scores": scores_from(state, list(scores))}, {"correction": text, "reason": why}
            )

        ui.submit_correction.click(submit_better, [session, ui.correction, ui.reason, *ui.score_radios], judge_outputs)

        for label, up, button in ui.rate_buttons:

            def rate_answer(state, text, why, label=label, up=up):  # not "rate": that name is the API's /rate
                return judged(state, "rate", {"label": label, "up": up}, {"correction": text, "reason": why})

            button.click(rate_answer, [session, ui.correction, ui.reason], judge_outputs)
