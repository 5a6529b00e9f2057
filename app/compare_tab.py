"""The Compare tab: 2-4 contestants answer one prompt side by side; the clinician votes, ranks or
writes a better answer, on a free question or on the next prompt of their queue (where one answer can
also be rated on its own, 👍/👎). The 1-5 score rows are the criteria of the guideline in force, which
must be acknowledged before the first judgment (and again when a newer version is published).

Text with identifiers (a pasted case with a name, a phone number, an address ...) is held back before any
model sees it: the box under the prompt (``#deid-box``) names the categories found and shows the redacted
text; "脱敏后发送 Redact and send" (``#deid-send``, the default) sends that, "修改 Edit" (``#deid-edit``) puts
the text back in its box. The same for a better answer and a reason.

The callbacks here only translate between components and :class:`app.arena.Arena`; the arena talks
to the model pool and the preference store. A mistake the user can fix (an empty prompt, a missing
place in a ranking) is shown in the status line, never as a traceback.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.arena import (
    ACK_LABEL,
    CHOICE_NAMES,
    QUEUE_EMPTY,
    Arena,
    ArenaSession,
    GuidelineUnread,
    HeldEntry,
    resolve_decoding,
)
from app.contestants import available_contestants, completed_runs, default_checkpoints, run_checkpoints
from app.guidelines_tab import guideline_markdown
from app.identifiers import IdentifiersFound, describe_counts
from preference_store.guidelines import DEFAULT_CRITERIA, MAX_CRITERIA
from preference_store.records import MAX_CONTESTANTS, PANEL_LABELS
from training.errors import UserError

THUMBS = {True: "👍", False: "👎"}
EDIT_AGAIN = "已放回输入框 / back in its box: edit it (remove the identifiers) and send again"
NOTHING_HELD = "没有待发送的内容 / nothing is waiting to be sent"


@dataclass
class PanelWidgets:
    column: gr.Column
    header: gr.Markdown
    chat: gr.Chatbot
    place: gr.Dropdown
    scores: list[gr.Radio]  # MAX_CRITERIA slots: the guideline's criteria in priority order, the rest hidden
    rating: gr.Row  # 👍/👎 on this answer alone (queue prompts)


@dataclass
class CompareTab:
    """The components :mod:`app.main` fills at page load: ``run``, ``contestants`` and ``status``, then
    ``load_outputs`` with what ``load(session)`` returns (the queue progress, the guideline when it is
    unread, the score rows' criteria)."""

    run: gr.Dropdown
    contestants: gr.CheckboxGroup
    status: gr.Markdown
    load: object = None  # (ArenaSession) -> list of updates for load_outputs
    load_outputs: list = None


def status_line(message: str, ok: bool = True) -> str:
    return message if ok else f"⚠ {html.escape(message, quote=False)}"


def contestant_choices(cfg) -> list[tuple[str, str]]:
    return [(c.label, c.checkpoint_id) for c in available_contestants(cfg)]


def runs_and_contestants(cfg, selected: list[str] | None):
    """Re-read the runs: the run list, every checkpoint as a choice, and the selection (kept where it
    still exists, else the newest run's stages)."""
    runs = [r.run_id for r in completed_runs(cfg)]
    choices = contestant_choices(cfg)
    known = {cid for _, cid in choices}
    keep = [cid for cid in (selected or []) if cid in known] or default_checkpoints(cfg)
    message = (
        ""
        if runs
        else status_line("还没有训练好的运行 / no completed run yet: train one with ./launch.sh train-all", ok=False)
    )
    run = gr.update(choices=runs) if selected else gr.update(choices=runs, value=runs[0] if runs else None)
    return run, gr.update(choices=choices, value=keep), message


def criteria_updates(session: ArenaSession, reset: bool = False) -> list:
    """The score radios of every panel, panel by panel: the session's criteria (its guideline's) in the
    first slots with their names as labels, the other slots hidden; ``reset`` empties them."""
    criteria = session.criteria or DEFAULT_CRITERIA
    updates = []
    for _ in PANEL_LABELS:
        for slot in range(MAX_CRITERIA):
            shown = {"value": None} if reset else {}
            if slot < len(criteria):
                updates.append(
                    gr.update(label=criteria[slot].name, info=criteria[slot].description or None, visible=True, **shown)
                )
            else:
                updates.append(gr.update(visible=False, **shown))
    return updates


def render(session: ArenaSession, reset_form: bool = True) -> list:
    """Component updates showing ``session``, in the order of the tab's ``view`` list: per panel its
    header, chat, visibility, ranking place and score radios, then the vote row, the ranking row and per
    panel its 👍/👎 row. ``reset_form`` empties the places and scores (a new answer set or a stored judgment)."""
    n = len(session.panels)
    headers, chats, columns, places, ratings = [], [], [], [], []
    for i, label in enumerate(PANEL_LABELS):
        present = i < n
        columns.append(gr.update(visible=present))
        headers.append(gr.update(value=f"### {html.escape(session.header(label))}" if present else ""))
        chats.append(gr.update(value=list(session.panels[i].display) if present else []))
        rankable = n > 2 and label in session.judgeable and not session.voted
        choices = list(range(1, len(session.judgeable) + 1)) if rankable else []
        places.append(
            gr.update(choices=choices, value=None, visible=rankable)
            if reset_form
            else gr.update(choices=choices, visible=rankable)
        )
        ratings.append(
            gr.update(
                visible=session.assignment_id is not None
                and session.comparison_id is not None
                and label in session.judgeable
            )
        )
    judged_pairwise = len(session.judgeable) == 2 or (n == 2 and not session.judgeable)
    return [
        *headers,
        *chats,
        *columns,
        *places,
        *criteria_updates(session, reset=reset_form),
        gr.update(visible=judged_pairwise),
        gr.update(visible=n > 2 and len(session.judgeable) != 2),
        *ratings,
    ]


def held_view(session: ArenaSession) -> list:
    """The identifier box (``#deid-box``, ``#deid-summary``, ``#deid-preview``): shown with what was found and
    the redacted text while an entry is held back, hidden otherwise."""
    held = session.held
    if held is None:
        return [gr.update(visible=False), "", ""]
    summary = (
        f"⚠ {html.escape(held.check.summary(), quote=False)} — 尚未发送 not sent yet: 脱敏后发送 redact "
        "and send (only the text below is sent and stored), or 修改 edit"
    )
    return [gr.update(visible=True), summary, held.check.preview()]


def scores_from(session: ArenaSession, values: list) -> dict[str, dict]:
    """The score radios (``MAX_CRITERIA`` per panel, flattened panel by panel) as {label: {criterion: value}}."""
    keys = [c.key for c in (session.criteria or DEFAULT_CRITERIA)]
    return {
        label: dict(zip(keys, values[i * MAX_CRITERIA : (i + 1) * MAX_CRITERIA]))
        for i, label in enumerate(PANEL_LABELS)
    }


def progress_markdown(arena: Arena, session: ArenaSession) -> str:
    """ "我的队列 My queue: 12 / 40" (and whether the panels hold a queue prompt)."""
    try:
        progress = arena.queue_progress(session)
    except UserError as err:
        return status_line(str(err), ok=False)
    if progress is None:
        return ""
    line = f"我的队列 My queue: **{progress}** 已完成 done"
    if progress.total == 0:
        line += " · 题库为空 no bank prompts yet (admins import them in the Data tab)"
    elif progress.done >= progress.total:
        line += f" · {QUEUE_EMPTY}"
    if session.assignment_id is not None:
        line += " · 当前为队列题 the panels hold a queue prompt"
    if arena.round_contestants():
        line += " · 本轮参赛模型由管理员设定 this round's contestants are set by the admin"
    return line


def build_compare_tab(cfg, arena: Arena, session: gr.State) -> CompareTab:
    """Lay out the Compare tab inside the current ``gr.Tab`` and wire its events."""
    d = cfg.app.decoding
    with gr.Row():
        run = gr.Dropdown(
            label="训练运行 Run (选择后填入其四个阶段 picks its four stages)", choices=[], scale=2, elem_id="run-choice"
        )
        refresh = gr.Button("刷新 Refresh runs", scale=0, elem_id="refresh-runs")
        # admins only (shown at page load): a judgment made with the names shown is not blind, and stays out of the
        # leaderboard and the training pairs unless store.admit_unblinded
        blind = gr.Checkbox(
            value=cfg.app.blind,
            label="盲评 Blind (隐藏名称 hide names; 管理员 admins)",
            scale=1,
            elem_id="blind",
            visible=False,
        )
    contestants = gr.CheckboxGroup(
        label=f"参赛模型 Contestants (2-{MAX_CONTESTANTS}; 可混合不同运行和外部端点 runs and endpoints can be mixed)",
        choices=[],
        elem_id="contestants",
    )
    with gr.Accordion("解码设置 Decoding settings (队列题使用统一设置 queue prompts use the shared ones)", open=False):
        with gr.Row():
            temperature = gr.Slider(
                0.0, d.max_temperature, value=d.temperature, step=0.05, label="temperature (0 = greedy)"
            )
            top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top-p")
            max_new_tokens = gr.Number(value=d.max_new_tokens, precision=0, minimum=1, label="max new tokens")
            seed = gr.Number(value=d.seed, precision=0, minimum=-1, label="seed (-1 = random, stored with each answer)")
    with gr.Row(equal_height=True, elem_id="queue-row"):
        queue_next = gr.Button("下一题 Next from my queue", variant="secondary", scale=0, elem_id="queue-next")
        progress = gr.Markdown("", elem_id="queue-progress")

    panels, rate_buttons = [], []
    with gr.Row():
        for label in PANEL_LABELS:
            with gr.Column(min_width=220, elem_id=f"panel-{label}") as column:
                header = gr.Markdown(f"### 模型 {label}", elem_id=f"header-{label}")
                chat = gr.Chatbot(
                    label=f"模型 {label}",
                    show_label=False,
                    height=360,
                    elem_id=f"chat-{label}",
                    elem_classes=["arena-chat"],
                    feedback_options=None,
                    buttons=["copy"],
                )
                with gr.Row(visible=False, elem_id=f"rate-{label}") as rating:
                    buttons = {
                        up: gr.Button(
                            f"{THUMBS[up]} {label}",
                            size="sm",
                            min_width=60,
                            elem_id=f"rate-{label}-{'up' if up else 'down'}",
                        )
                        for up in (True, False)
                    }
                place = gr.Dropdown(
                    label=f"{label} 名次 place (1 = 最好 best)", choices=[], visible=False, elem_id=f"place-{label}"
                )
                with gr.Accordion(f"{label} 评分 scores (1-5, 可选 optional)", open=False, elem_id=f"scores-{label}"):
                    # slot n holds the guideline's n-th criterion (its name is the label), unused slots hidden
                    radios = [
                        gr.Radio(
                            [1, 2, 3, 4, 5],
                            value=None,
                            elem_id=f"score-{label}-{slot + 1}",
                            label=DEFAULT_CRITERIA[slot].name if slot < len(DEFAULT_CRITERIA) else "",
                            visible=slot < len(DEFAULT_CRITERIA),
                        )
                        for slot in range(MAX_CRITERIA)
                    ]
            panels.append(PanelWidgets(column, header, chat, place, radios, rating))
            rate_buttons += [(label, up, button) for up, button in buttons.items()]

    with gr.Row():
        prompt = gr.Textbox(
            placeholder="输入问题，所有模型同时回答 / one question, every model answers",
            show_label=False,
            lines=2,
            max_lines=8,
            scale=5,
            elem_id="prompt",
        )
        send = gr.Button("发送 Send", variant="primary", scale=1, elem_id="send")
    with gr.Column(visible=False, elem_id="deid-box") as deid_box:
        deid_summary = gr.Markdown("", elem_id="deid-summary")
        deid_preview = gr.Textbox(
            label="脱敏后的文本 redacted text (只发送这段 only this is sent)",
            interactive=False,
            lines=2,
            max_lines=8,
            elem_id="deid-preview",
        )
        with gr.Row():
            deid_send = gr.Button("脱敏后发送 Redact and send", variant="primary", elem_id="deid-send")
            deid_edit = gr.Button("修改 Edit", elem_id="deid-edit")
    with gr.Row():
        regenerate = gr.Button("重新生成 Regenerate", elem_id="regenerate")
        new_conversation = gr.Button("新对话 New conversation", elem_id="new-conversation")
        clear = gr.Button("清空 Clear", elem_id="clear")

    with gr.Row(equal_height=True):
        gr.Markdown("#### 评判 Judge")
        open_guideline = gr.Button("评判准则 Guidelines", size="sm", scale=0, elem_id="open-guideline")
    with gr.Column(visible=False, elem_id="guideline-box") as guideline_box:
        guideline_text = gr.Markdown("", elem_id="guideline-text")
        acknowledge = gr.Button(ACK_LABEL, variant="primary", elem_id="guideline-ack")
    with gr.Row(visible=False) as vote_row:
        vote_buttons = {choice: gr.Button(name, elem_id=f"vote-{choice}") for choice, name in CHOICE_NAMES.items()}
    with gr.Row(visible=False) as rank_row:
        rank = gr.Button("提交排序 Submit ranking", variant="primary", elem_id="submit-ranking")
    reason = gr.Textbox(label="理由 Reason (可选 optional)", lines=1, elem_id="reason")
    with gr.Row():
        correction = gr.Textbox(
            label="写一个更好的回答 Write a better answer (代替投票或排序 instead of a vote or "
            "ranking: one judgment per comparison)",
            lines=3,
            scale=5,
            elem_id="correction",
        )
        submit_correction = gr.Button("提交改写 Submit better answer", scale=1, elem_id="submit-correction")
    status = gr.Markdown("", elem_id="status")

    places = [p.place for p in panels]
    score_radios = [r for p in panels for r in p.scores]
    view = [
        *(p.header for p in panels),
        *(p.chat for p in panels),
        *(p.column for p in panels),
        *places,
        *score_radios,
        vote_row,
        rank_row,
        *(p.rating for p in panels),
    ]
    radio_slice = slice(4 * len(PANEL_LABELS), 4 * len(PANEL_LABELS) + len(score_radios))
    decoding_inputs = [temperature, top_p, max_new_tokens, seed]
    deid_outputs = [deid_box, deid_summary, deid_preview]

    def guideline_shown(visible: bool = True) -> list:
        """The guideline box (with the version in force) shown, or hidden."""
        if not visible:
            return [gr.update(visible=False), gr.update()]
        return [gr.update(visible=True), guideline_markdown(arena.store.guideline())]

    # --- page load -----------------------------------------------------------------------------
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
            *guideline_shown(unread),
            *criteria_updates(state),
            gr.update(visible=is_admin(state)),
        ]

    def is_admin(state: ArenaSession) -> bool:
        return state.annotator is not None and state.annotator.is_admin

    def blind_for(state: ArenaSession, is_blind: bool) -> bool:
        """Only an admin turns blind mode off (as with the API's blind=False); everyone else judges as configured."""
        return bool(is_blind) if is_admin(state) else cfg.app.blind

    # --- contestants -----------------------------------------------------------------------------
    def pick_run(run_id: str | None):
        return gr.update(value=run_checkpoints(cfg, run_id)) if run_id else gr.update()

    def start(state: ArenaSession, selected: list[str], is_blind: bool):
        try:
            arena.start(state, selected, blind_for(state, is_blind))
            message = ""
        except UserError as err:
            state.panels = []
            arena.clear(state)
            message = status_line(str(err), ok=False)
        return state, message, progress_markdown(arena, state), *render(state), *held_view(state)

    refresh.click(lambda selected: runs_and_contestants(cfg, selected), [contestants], [run, contestants, status])
    run.input(pick_run, [run], [contestants])
    # a new selection, a new blind setting or the button: a new conversation (new shuffle)
    for trigger in (contestants.change, blind.input, new_conversation.click):
        trigger(start, [session, contestants, blind], [session, status, progress, *view, *deid_outputs])

    # --- asking --------------------------------------------------------------------------------
    def streamed(state: ArenaSession, make_steps, clear_prompt: bool, hold: dict | None = None):
        """Show the answers as they grow; the status says when they are complete. A typed prompt with
        identifiers is held back (``hold``: the inputs to send it with later) and nothing is generated."""
        working = status_line("… 生成中 generating")
        state.held = None  # a new question replaces one held back
        steps = None
        try:
            steps = make_steps()
            state = next(steps)  # checks the prompt and starts the panels
            yield (
                state,
                working,
                "" if clear_prompt else gr.update(),
                progress_markdown(arena, state),
                *render(state),
                *held_view(state),
            )
            for state in steps:
                yield state, working, gr.update(), gr.update(), *render(state, reset_form=False), *held_view(state)
        except IdentifiersFound as found:
            state.held = HeldEntry("ask", found.check, hold or {})
            yield (
                state,
                status_line(str(found), ok=False),
                "",
                progress_markdown(arena, state),
                *render(state, reset_form=False),
                *held_view(state),
            )
            return
        except UserError as err:
            yield (
                state,
                status_line(str(err), ok=False),
                gr.update(),
                progress_markdown(arena, state),
                *render(state, reset_form=False),
                *held_view(state),
            )
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
        yield (
            state,
            done,
            gr.update(),
            progress_markdown(arena, state),
            *render(state, reset_form=False),
            *held_view(state),
        )

    def ask_with(state, text, settings: tuple, redact: bool = False):
        temp, p, max_new, seed_value = settings
        yield from streamed(
            state,
            lambda: arena.ask(
                state,
                text,
                resolve_decoding(d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value),
                redact=redact,
            ),
            clear_prompt=True,
            hold={"settings": settings},
        )

    def ask(state, text, temp, p, max_new, seed_value):
        yield from ask_with(state, text, (temp, p, max_new, seed_value))

    def ask_again(state, text, temp, p, max_new, seed_value):
        yield from streamed(
            state,
            lambda: arena.regenerate(
                state, resolve_decoding(d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value)
            ),
            clear_prompt=False,
        )

    def next_from_queue(state: ArenaSession, selected: list[str], is_blind: bool):
        try:
            # a round whose contestants the admin fixed is answered by those, whatever this browser selected
            chosen = None if arena.round_contestants() else selected
            assignment = arena.take_assignment(state, chosen, blind_for(state, is_blind))
        except UserError as err:
            yield (
                state,
                status_line(str(err), ok=False),
                gr.update(),
                progress_markdown(arena, state),
                *render(state, reset_form=False),
                *held_view(state),
            )
            return
        if assignment is None:
            yield (
                state,
                status_line(QUEUE_EMPTY),
                gr.update(),
                progress_markdown(arena, state),
                *render(state),
                *held_view(state),
            )
            return
        yield from streamed(state, lambda: arena.ask_queue(state, assignment), clear_prompt=False)

    ask_inputs = [session, prompt, *decoding_inputs]
    ask_outputs = [session, status, prompt, progress, *view, *deid_outputs]
    judge_outputs = [session, status, reason, correction, guideline_box, guideline_text, progress, *view, *deid_outputs]
    entry_outputs = list(dict.fromkeys([*ask_outputs, *judge_outputs]))  # "redact and send" may do either

    # --- text held back for identifiers: redact and send, or edit -------------------------------------
    def send_redacted(state: ArenaSession):
        """Send the held entry with its identifiers redacted (the models and the store see only that)."""
        held = state.held
        if held is None:
            yield {
                session: state,
                status: status_line(NOTHING_HELD, ok=False),
                **dict(zip(deid_outputs, held_view(state))),
            }
            return
        if held.action == "ask":
            for values in ask_with(state, held.check.typed["prompt"], held.inputs["settings"], redact=True):
                yield dict(zip(ask_outputs, values))
        else:
            yield dict(zip(judge_outputs, judged(state, held.action, held.inputs, held.check.typed, redact=True)))

    def edit_held(state: ArenaSession):
        """Put the held text back in its boxes, to be edited and sent again."""
        held, state.held = state.held, None
        out = {
            session: state,
            status: status_line(EDIT_AGAIN) if held else "",
            **dict(zip(deid_outputs, held_view(state))),
        }
        for field, box in (("prompt", prompt), ("correction", correction), ("reason", reason)):
            if held is not None and field in held.check.typed:
                out[box] = held.check.typed[field]
        return out

    limit = cfg.app.concurrent_comparisons
    asking = [
        deid_send.click(send_redacted, [session], entry_outputs, concurrency_limit=limit, concurrency_id="generate"),
        send.click(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        prompt.submit(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        regenerate.click(ask_again, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        queue_next.click(
            next_from_queue,
            [session, contestants, blind],
            ask_outputs,
            concurrency_limit=limit,
            concurrency_id="generate",
        ),
    ]

    def clear_panels(state: ArenaSession):
        arena.clear(state)
        return state, "", "", progress_markdown(arena, state), *render(state), *held_view(state)

    clear.click(clear_panels, [session], [session, status, prompt, progress, *view, *deid_outputs], cancels=asking)
    for panel in panels:  # the chat's own trash icon: show the session's conversation again
        panel.chat.clear(lambda state: render(state, reset_form=False), [session], view)
    new_conversation.click(None, cancels=asking)
    deid_edit.click(edit_held, [session], [session, status, prompt, correction, reason, *deid_outputs])

    # --- the guideline -------------------------------------------------------------------------
    def acknowledge_guideline(state: ArenaSession):
        try:
            message = arena.acknowledge_guideline(state)
        except UserError as err:
            return state, status_line(str(err), ok=False), *guideline_shown(True), *criteria_updates(state)
        return state, message, *guideline_shown(False), *criteria_updates(state)

    open_guideline.click(lambda: guideline_shown(True), None, [guideline_box, guideline_text])
    # the public /acknowledge_guideline is the API's (app.api): this browser event keeps a private name of its own
    acknowledge.click(
        acknowledge_guideline,
        [session],
        [session, status, guideline_box, guideline_text, *score_radios],
        api_name="acknowledge_guideline_in_tab",
    )

    # --- judging -------------------------------------------------------------------------------
    def judge_with(state: ArenaSession, action: str, inputs: dict, texts: dict, redact: bool) -> str:
        """Run one judgment ("vote", "rank", "correct" or "rate") with the typed ``texts`` (correction, reason)."""
        if action == "vote":
            return arena.vote(state, inputs["choice"], texts.get("reason"), inputs["scores"], redact=redact)
        if action == "rank":
            return arena.rank(state, inputs["places"], texts.get("reason"), inputs["scores"], redact=redact)
        if action == "correct":
            return arena.correct(state, texts.get("correction"), texts.get("reason"), inputs["scores"], redact=redact)
        return arena.rate(
            state, inputs["label"], inputs["up"], texts.get("correction"), texts.get("reason"), redact=redact
        )

    def judged(state: ArenaSession, action: str, inputs: dict, texts: dict, redact: bool = False):
        """Outputs of ``judge_outputs``: the confirmation, or the reason it was refused (the form stays as it
        is, so the clinician can fix one field; the guideline is shown when it must be read first). Typed text
        with identifiers is held back: it leaves its box and the identifier box shows what was found."""
        clear_correction, reset_form = action in ("correct", "rate"), action != "rate"
        state.held = None  # a new judgment replaces one held back
        try:
            message = judge_with(state, action, inputs, texts, redact)
        except UserError as err:
            unchanged = [gr.update() for _ in view]
            unchanged[radio_slice] = criteria_updates(state)  # a newer guideline may have new criteria
            shown = guideline_shown() if isinstance(err, GuidelineUnread) else [gr.update(), gr.update()]
            boxes = [gr.update(), gr.update()]
            if isinstance(err, IdentifiersFound):
                state.held = HeldEntry(action, err.check, inputs)
                boxes = ["" if field in err.check.typed else gr.update() for field in ("reason", "correction")]
            return (
                state,
                status_line(str(err), ok=False),
                *boxes,
                *shown,
                progress_markdown(arena, state),
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
            progress_markdown(arena, state),
            *render(state, reset_form=reset_form),
            *held_view(state),
        )

    for choice, button in vote_buttons.items():

        def vote(state, why, *scores, choice=choice):
            return judged(
                state, "vote", {"choice": choice, "scores": scores_from(state, list(scores))}, {"reason": why}
            )

        button.click(vote, [session, reason, *score_radios], judge_outputs)

    def submit_ranking(state, why, *values):
        chosen = dict(zip(PANEL_LABELS, values[: len(PANEL_LABELS)]))
        return judged(
            state,
            "rank",
            {"places": chosen, "scores": scores_from(state, list(values[len(PANEL_LABELS) :]))},
            {"reason": why},
        )

    rank.click(submit_ranking, [session, reason, *places, *score_radios], judge_outputs)

    def submit_better(state, text, why, *scores):
        return judged(
            state, "correct", {"scores": scores_from(state, list(scores))}, {"correction": text, "reason": why}
        )

    submit_correction.click(submit_better, [session, correction, reason, *score_radios], judge_outputs)

    for label, up, button in rate_buttons:

        def rate_answer(state, text, why, label=label, up=up):  # not "rate": that name is the API's /rate
            return judged(state, "rate", {"label": label, "up": up}, {"correction": text, "reason": why})

        button.click(rate_answer, [session, correction, reason], judge_outputs)
    return CompareTab(
        run,
        contestants,
        status,
        load=load,
        load_outputs=[progress, guideline_box, guideline_text, *score_radios, blind],
    )
