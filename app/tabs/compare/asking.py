"""The Compare tab's asking: the contestants (a run's stages, a new conversation), a free question, the next
prompt of the clinician's queue, regenerate and clear, and text held back for identifiers (redact and send, or
edit). Answers stream into the panels as they grow; a mistake the user can fix is the status line.
"""

from __future__ import annotations

import gradio as gr

from app.arena import QUEUE_EMPTY, RESOLVED_TIE, Arena, ArenaSession, HeldEntry, resolve_decoding
from app.contestants import run_checkpoints
from app.identifiers import IdentifiersFound, describe_counts
from app.tabs.compare.judging import Judging
from app.tabs.compare.layout import CompareLayout
from app.tabs.compare.views import (
    EDIT_AGAIN,
    NOTHING_HELD,
    held_view,
    is_admin,
    progress_markdown,
    render,
    runs_and_contestants,
    status_line,
)
from core.errors import UserError
from preference_store.records import PANEL_LABELS


class Asking:
    """The asking controls' callbacks for one tab (``ui``), through ``arena``; a held-back judgment is sent
    again through ``judging``."""

    def __init__(self, cfg, arena: Arena, ui: CompareLayout, judging: Judging) -> None:
        self.cfg = cfg
        self.arena = arena
        self.ui = ui
        self.judging = judging
        self.session = None  # the tab's gr.State (set by wire)

    def blind_for(self, state: ArenaSession, is_blind: bool) -> bool:
        """Only an admin turns blind mode off (as with the API's blind=False); everyone else judges as configured."""
        return bool(is_blind) if is_admin(state) else self.cfg.app.blind

    # --- contestants -----------------------------------------------------------------------------
    def pick_run(self, run_id: str | None):
        return gr.update(value=run_checkpoints(self.cfg, run_id)) if run_id else gr.update()

    def start(self, state: ArenaSession, selected: list[str], is_blind: bool):
        try:
            self.arena.start(state, selected, self.blind_for(state, is_blind))
            message = ""
        except UserError as err:
            state.panels = []
            self.arena.clear(state)
            message = status_line(str(err), ok=False)
        return state, message, progress_markdown(self.arena, state), *render(state), *held_view(state)

    # --- asking --------------------------------------------------------------------------------
    def asked_view(
        self, state: ArenaSession, status: str, prompt: str | None = None, reset_form: bool = False
    ) -> tuple:
        """The ask outputs: the session, the status line, the prompt box (None: as it is), the queue progress,
        the panels (``reset_form``: their places and scores emptied) and the identifier box."""
        return (
            state,
            status,
            gr.update() if prompt is None else prompt,
            progress_markdown(self.arena, state),
            *render(state, reset_form=reset_form),
            *held_view(state),
        )

    def streamed(self, state: ArenaSession, make_steps, clear_prompt: bool, hold: dict | None = None):
        """Show the answers as they grow; the status says when they are complete. A typed prompt with
        identifiers is held back (``hold``: the inputs to send it with later) and nothing is generated."""
        arena = self.arena
        working = status_line("… 生成中 generating")
        state.held = None  # a new question replaces one held back
        steps = None
        try:
            steps = make_steps()
            state = next(steps)  # checks the prompt and starts the panels
            yield self.asked_view(state, working, "" if clear_prompt else None, reset_form=True)
            for state in steps:
                yield state, working, gr.update(), gr.update(), *render(state, reset_form=False), *held_view(state)
        except IdentifiersFound as found:
            state.held = HeldEntry("ask", found.check, hold or {})
            yield self.asked_view(state, status_line(str(found), ok=False), "")
            return
        except UserError as err:
            yield self.asked_view(state, status_line(str(err), ok=False))
            return
        finally:
            if steps is not None:
                steps.close()  # when the browser cancels, the pool stops generating too
        if state.comparison_id is not None:
            seed_used = arena.store.get_comparison(state.comparison_id).responses[0].seed
        empty = [
            label
            for label in state.judgeable
            if not state.panels[PANEL_LABELS.index(label)].history[-1]["content"].strip()
        ]
        queue = state.assignment_id is not None
        if state.comparison_id is None:
            done = "⚠ 少于两个回答，本轮无法评判 / fewer than two answers: nothing to judge"
        elif state.resolved is not None:  # identical answers in an adaptive round: settled without the clinician
            done = f"✓ {RESOLVED_TIE}"
        else:
            done = f"✓ 回答完毕 answers complete ({'队列题 queue prompt, ' if queue else ''}seed {seed_used})"
            if empty:
                done += (
                    f"; {', '.join(empty)} 为空回答 (empty answer): "
                    "可以评判，或点“重新生成 Regenerate”再问一次 / judge, or ask again with Regenerate."
                )
            elif queue:
                done += ". 请评判，或为单个回答评分 👍/👎 Please judge, or rate single answers."
            else:
                done += ". 请评判 Please judge."
        if state.redacted:
            done += f" 已脱敏 redacted before sending: {describe_counts(state.redacted)}."
        yield self.asked_view(state, done)

    def ask_with(self, state, text, settings: tuple, redact: bool = False):
        temp, p, max_new, seed_value = settings
        d = self.cfg.app.decoding
        yield from self.streamed(
            state,
            lambda: self.arena.ask(
                state,
                text,
                resolve_decoding(d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value),
                redact=redact,
            ),
            clear_prompt=True,
            hold={"settings": settings},
        )

    def ask(self, state, text, temp, p, max_new, seed_value):
        yield from self.ask_with(state, text, (temp, p, max_new, seed_value))

    def ask_again(self, state, text, temp, p, max_new, seed_value):
        d = self.cfg.app.decoding
        yield from self.streamed(
            state,
            lambda: self.arena.regenerate(
                state, resolve_decoding(d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value)
            ),
            clear_prompt=False,
        )

    def next_from_queue(self, state: ArenaSession, selected: list[str], is_blind: bool):
        arena = self.arena
        try:
            # a round whose contestants the admin fixed is answered by those, whatever this browser selected
            chosen = None if arena.round_contestants() else selected
            assignment = arena.take_assignment(state, chosen, self.blind_for(state, is_blind))
        except UserError as err:
            yield self.asked_view(state, status_line(str(err), ok=False))
            return
        if assignment is None:
            yield self.asked_view(state, status_line(QUEUE_EMPTY), reset_form=True)
            return
        yield from self.streamed(state, lambda: arena.ask_queue(state, assignment), clear_prompt=False)

    # --- text held back for identifiers: redact and send, or edit -------------------------------------
    def send_redacted(self, state: ArenaSession):
        """Send the held entry with its identifiers redacted (the models and the store see only that)."""
        ui, session = self.ui, self.session
        held = state.held
        if held is None:
            yield {
                session: state,
                ui.status: status_line(NOTHING_HELD, ok=False),
                **dict(zip(ui.deid_outputs, held_view(state))),
            }
            return
        if held.action == "ask":
            for values in self.ask_with(state, held.check.typed["prompt"], held.inputs["settings"], redact=True):
                yield dict(zip(ui.ask_outputs(session), values))
        else:
            judged = self.judging.judged(state, held.action, held.inputs, held.check.typed, redact=True)
            yield dict(zip(ui.judge_outputs(session), judged))

    def edit_held(self, state: ArenaSession):
        """Put the held text back in its boxes, to be edited and sent again."""
        ui = self.ui
        held, state.held = state.held, None
        out = {
            self.session: state,
            ui.status: status_line(EDIT_AGAIN) if held else "",
            **dict(zip(ui.deid_outputs, held_view(state))),
        }
        for field, box in (("prompt", ui.prompt), ("correction", ui.correction), ("reason", ui.reason)):
            if held is not None and field in held.check.typed:
                out[box] = held.check.typed[field]
        return out

    def clear_panels(self, state: ArenaSession):
        self.arena.clear(state)
        return state, "", "", progress_markdown(self.arena, state), *render(state), *held_view(state)

    def wire(self, session: gr.State) -> None:
        """Bind the contestants', the asking and the identifier box's events."""
        ui, cfg = self.ui, self.cfg
        self.session = session
        view, deid_outputs = ui.view, ui.deid_outputs
        ui.refresh.click(
            lambda selected: runs_and_contestants(cfg, selected), [ui.contestants], [ui.run, ui.contestants, ui.status]
        )
        ui.run.input(self.pick_run, [ui.run], [ui.contestants])
        # a new selection, a new blind setting or the button: a new conversation (new shuffle)
        for trigger in (ui.contestants.change, ui.blind.input, ui.new_conversation.click):
            trigger(
                self.start,
                [session, ui.contestants, ui.blind],
                [session, ui.status, ui.progress, *view, *deid_outputs],
            )

        ask_inputs = [session, ui.prompt, *ui.decoding_inputs]
        ask_outputs = ui.ask_outputs(session)
        entry_outputs = list(dict.fromkeys([*ask_outputs, *ui.judge_outputs(session)]))  # redact and send: either
        limit = cfg.app.concurrent_comparisons
        generate = {"concurrency_limit": limit, "concurrency_id": "generate"}
        asking = [
            ui.deid_send.click(self.send_redacted, [session], entry_outputs, **generate),
            ui.send.click(self.ask, ask_inputs, ask_outputs, **generate),
            ui.prompt.submit(self.ask, ask_inputs, ask_outputs, **generate),
            ui.regenerate.click(self.ask_again, ask_inputs, ask_outputs, **generate),
            ui.queue_next.click(self.next_from_queue, [session, ui.contestants, ui.blind], ask_outputs, **generate),
        ]
        ui.clear.click(
            self.clear_panels,
            [session],
            [session, ui.status, ui.prompt, ui.progress, *view, *deid_outputs],
            cancels=asking,
        )
        for panel in ui.panels:  # the chat's own trash icon: show the session's conversation again
            panel.chat.clear(lambda state: render(state, reset_form=False), [session], view)
        ui.new_conversation.click(None, cancels=asking)
        ui.deid_edit.click(
            self.edit_held,
            [session],
            [session, ui.status, ui.prompt, ui.correction, ui.reason, *deid_outputs],
        )
