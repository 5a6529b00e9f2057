"""The Compare tab: 2-4 contestants answer one prompt side by side; the clinician votes, ranks or
writes a better answer, on a free question or on the next prompt of their queue (where one answer can
also be rated on its own, 👍/👎). The 1-5 score rows are the criteria of the guideline in force, which
must be acknowledged before the first judgment (and again when a newer version is published).

Text with identifiers (a pasted case with a name, a phone number, an address ...) is held back before any
model sees it: the box under the prompt (``#deid-box``) names the categories found and shows the redacted
text; "脱敏后发送 Redact and send" (``#deid-send``, the default) sends that, "修改 Edit" (``#deid-edit``) puts
the text back in its box. The same for a better answer and a reason.

The callbacks only translate between components and :class:`app.arena.Arena`; the arena talks to the model
pool and the preference store. A mistake the user can fix (an empty prompt, a missing place in a ranking) is
shown in the status line, never as a traceback. The parts:

- :mod:`app.tabs.compare.layout`: the components;
- :mod:`app.tabs.compare.views`: what a session looks like in them;
- :mod:`app.tabs.compare.asking`: contestants, questions, the queue, the identifier box;
- :mod:`app.tabs.compare.judging`: the guideline, votes, rankings, better answers, 👍/👎.
"""

from __future__ import annotations

import gradio as gr

from app.arena import Arena, ArenaSession
from app.tabs.compare.asking import Asking
from app.tabs.compare.judging import Judging
from app.tabs.compare.layout import lay_out
from app.tabs.compare.views import (
    CompareTab,
    criteria_updates,
    guideline_shown,
    is_admin,
    progress_markdown,
    render,
    runs_and_contestants,
    status_line,
)
from core.errors import UserError

__all__ = [
    "build_compare_tab",
    "criteria_updates",
    "progress_markdown",
    "render",
    "runs_and_contestants",
    "status_line",
]


def build_compare_tab(cfg, arena: Arena, session: gr.State) -> CompareTab:
    """Lay out the Compare tab inside the current ``gr.Tab`` and wire its events."""
    ui = lay_out(cfg)
    judging = Judging(arena, ui)
    Asking(cfg, arena, ui, judging).wire(session)
    judging.wire(session)

    def load(state: ArenaSession) -> list:
        """Progress, the score rows' criteria, while it is unread the guideline, and the blind switch for admins
        (for app.main's load)."""
        try:
            arena.load_guideline(state)
            unread = arena.guideline_to_read(state) is not None
        except UserError:
            unread = False
        return [
            progress_markdown(arena, state),
            *guideline_shown(arena, unread),
            *criteria_updates(state),
            gr.update(visible=is_admin(state)),
        ]

    return CompareTab(
        ui.run,
        ui.contestants,
        ui.status,
        load=load,
        load_outputs=[ui.progress, ui.guideline_box, ui.guideline_text, *ui.score_radios, ui.blind],
    )
