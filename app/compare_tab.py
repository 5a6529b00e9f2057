"""The Compare tab: 2-4 contestants answer one prompt side by side; the clinician votes, ranks or
writes a better answer, on a free question or on the next prompt of their queue (where one answer can
also be rated on its own, 👍/👎). The 1-5 score rows are the criteria of the guideline in force, which
must be acknowledged before the first judgment (and again when a newer version is published).

The callbacks here only translate between components and :class:`app.arena.Arena`; the arena talks
to the model pool and the preference store. A mistake the user can fix (an empty prompt, a missing
place in a ranking) is shown in the status line, never as a traceback.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.arena import ACK_LABEL, CHOICE_NAMES, QUEUE_EMPTY, Arena, ArenaSession, GuidelineUnread, resolve_decoding
from app.contestants import available_contestants, completed_runs, default_checkpoints, run_checkpoints
from app.guidelines_tab import guideline_markdown
from preference_store.guidelines import DEFAULT_CRITERIA, MAX_CRITERIA
from preference_store.records import MAX_CONTESTANTS, PANEL_LABELS
from training.errors import UserError

THUMBS = {True: "👍", False: "👎"}


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
    message = "" if runs else status_line("还没有训练好的运行 / no completed run yet: train one with "
                                          "./launch.sh train-all", ok=False)
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
                updates.append(gr.update(label=criteria[slot].name, info=criteria[slot].description or None,
                                         visible=True, **shown))
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
        places.append(gr.update(choices=choices, value=None, visible=rankable) if reset_form
                      else gr.update(choices=choices, visible=rankable))
        ratings.append(gr.update(visible=session.assignment_id is not None and session.comparison_id is not None
                                 and label in session.judgeable))
    judged_pairwise = len(session.judgeable) == 2 or (n == 2 and not session.judgeable)
    return [*headers, *chats, *columns, *places, *criteria_updates(session, reset=reset_form),
            gr.update(visible=judged_pairwise), gr.update(visible=n > 2 and len(session.judgeable) != 2), *ratings]


def scores_from(session: ArenaSession, values: list) -> dict[str, dict]:
    """The score radios (``MAX_CRITERIA`` per panel, flattened panel by panel) as {label: {criterion: value}}."""
    keys = [c.key for c in (session.criteria or DEFAULT_CRITERIA)]
    return {label: dict(zip(keys, values[i * MAX_CRITERIA:(i + 1) * MAX_CRITERIA]))
            for i, label in enumerate(PANEL_LABELS)}


def progress_markdown(arena: Arena, session: ArenaSession) -> str:
    """"我的队列 My queue: 12 / 40" (and whether the panels hold a queue prompt)."""
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
    return line


def build_compare_tab(cfg, arena: Arena, session: gr.State) -> CompareTab:
    """Lay out the Compare tab inside the current ``gr.Tab`` and wire its events."""
    d = cfg.app.decoding
    with gr.Row():
        run = gr.Dropdown(label="训练运行 Run (选择后填入其四个阶段 picks its four stages)", choices=[],
                          scale=2, elem_id="run-choice")
        refresh = gr.Button("刷新 Refresh runs", scale=0, elem_id="refresh-runs")
        blind = gr.Checkbox(value=cfg.app.blind, label="盲评 Blind (隐藏名称 hide names)", scale=1, elem_id="blind")
    contestants = gr.CheckboxGroup(label=f"参赛模型 Contestants (2-{MAX_CONTESTANTS}; 可混合不同运行 runs can be mixed)",
                                   choices=[], elem_id="contestants")
    with gr.Accordion("解码设置 Decoding settings (队列题使用统一设置 queue prompts use the shared ones)", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, d.max_temperature, value=d.temperature, step=0.05,
                                    label="temperature (0 = greedy)")
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
                chat = gr.Chatbot(label=f"模型 {label}", show_label=False, height=360, elem_id=f"chat-{label}",
                                  elem_classes=["arena-chat"], feedback_options=None, buttons=["copy"])
                with gr.Row(visible=False, elem_id=f"rate-{label}") as rating:
                    buttons = {up: gr.Button(f"{THUMBS[up]} {label}", size="sm", min_width=60,
                                             elem_id=f"rate-{label}-{'up' if up else 'down'}")
                               for up in (True, False)}
                place = gr.Dropdown(label=f"{label} 名次 place (1 = 最好 best)", choices=[], visible=False,
                                    elem_id=f"place-{label}")
                with gr.Accordion(f"{label} 评分 scores (1-5, 可选 optional)", open=False, elem_id=f"scores-{label}"):
                    # slot n holds the guideline's n-th criterion (its name is the label), unused slots hidden
                    radios = [gr.Radio([1, 2, 3, 4, 5], value=None, elem_id=f"score-{label}-{slot + 1}",
                                       label=DEFAULT_CRITERIA[slot].name if slot < len(DEFAULT_CRITERIA) else "",
                                       visible=slot < len(DEFAULT_CRITERIA))
                              for slot in range(MAX_CRITERIA)]
            panels.append(PanelWidgets(column, header, chat, place, radios, rating))
            rate_buttons += [(label, up, button) for up, button in buttons.items()]

    with gr.Row():
        prompt = gr.Textbox(placeholder="输入问题，所有模型同时回答 / one question, every model answers",
                            show_label=False, lines=2, max_lines=8, scale=5, elem_id="prompt")
        send = gr.Button("发送 Send", variant="primary", scale=1, elem_id="send")
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
        correction = gr.Textbox(label="写一个更好的回答 Write a better answer (随时可写 any time)", lines=3, scale=5,
                                elem_id="correction")
        submit_correction = gr.Button("提交改写 Submit better answer", scale=1, elem_id="submit-correction")
    status = gr.Markdown("", elem_id="status")

    places = [p.place for p in panels]
    score_radios = [r for p in panels for r in p.scores]
    view = [*(p.header for p in panels), *(p.chat for p in panels), *(p.column for p in panels), *places,
            *score_radios, vote_row, rank_row, *(p.rating for p in panels)]
    radio_slice = slice(4 * len(PANEL_LABELS), 4 * len(PANEL_LABELS) + len(score_radios))
    decoding_inputs = [temperature, top_p, max_new_tokens, seed]

    def guideline_shown(visible: bool = True) -> list:
        """The guideline box (with the version in force) shown, or hidden."""
        if not visible:
            return [gr.update(visible=False), gr.update()]
        return [gr.update(visible=True), guideline_markdown(arena.store.guideline())]

    # --- page load -----------------------------------------------------------------------------
    def load(state: ArenaSession) -> list:
        """Progress, the score rows' criteria and, while it is unread, the guideline (for app.main's load)."""
        try:
            arena.load_guideline(state)
            unread = arena.guideline_to_read(state) is not None
        except UserError:
            unread = False
        return [progress_markdown(arena, state), *guideline_shown(unread), *criteria_updates(state)]

    # --- contestants -----------------------------------------------------------------------------
    def pick_run(run_id: str | None):
        return gr.update(value=run_checkpoints(cfg, run_id)) if run_id else gr.update()

    def start(state: ArenaSession, selected: list[str], is_blind: bool):
        try:
            arena.start(state, selected, is_blind)
            message = ""
        except UserError as err:
            state.panels = []
            arena.clear(state)
            message = status_line(str(err), ok=False)
        return state, message, progress_markdown(arena, state), *render(state)

    refresh.click(lambda selected: runs_and_contestants(cfg, selected), [contestants], [run, contestants, status])
    run.input(pick_run, [run], [contestants])
    # a new selection, a new blind setting or the button: a new conversation (new shuffle)
    for trigger in (contestants.change, blind.input, new_conversation.click):
        trigger(start, [session, contestants, blind], [session, status, progress, *view])

    # --- asking --------------------------------------------------------------------------------
    def streamed(state: ArenaSession, make_steps, clear_prompt: bool):
        """Show the answers as they grow; the status says when they are complete."""
        working = status_line("… 生成中 generating")
        steps = None
        try:
            steps = make_steps()
            state = next(steps)  # checks the prompt and starts the panels
            yield state, working, "" if clear_prompt else gr.update(), progress_markdown(arena, state), *render(state)
            for state in steps:
                yield state, working, gr.update(), gr.update(), *render(state, reset_form=False)
        except UserError as err:
            yield (state, status_line(str(err), ok=False), gr.update(), progress_markdown(arena, state),
                   *render(state, reset_form=False))
            return
        finally:
            if steps is not None:
                steps.close()  # when the browser cancels, the pool stops generating too
        if state.comparison_id is not None:
            seed_used = arena.store.get_comparison(state.comparison_id).responses[0].seed
        empty = [label for label in state.judgeable
                 if not state.panels[PANEL_LABELS.index(label)].history[-1]["content"].strip()]
        if state.comparison_id is None:
            done = "⚠ 少于两个回答，本轮无法评判 / fewer than two answers: nothing to judge"
        elif empty:
            done = (f"✓ 回答完毕 answers complete (seed {seed_used}); {', '.join(empty)} 为空回答 (empty answer): "
                    "可以评判，或点“重新生成 Regenerate”再问一次 / judge, or ask again with Regenerate.")
        elif state.assignment_id is not None:
            done = (f"✓ 回答完毕 answers complete (队列题 queue prompt, seed {seed_used}). 请评判，或为单个回答评分 "
                    f"👍/👎 Please judge, or rate single answers.")
        else:
            done = f"✓ 回答完毕 answers complete (seed {seed_used}). 请评判 Please judge."
        yield state, done, gr.update(), progress_markdown(arena, state), *render(state, reset_form=False)

    def ask(state, text, temp, p, max_new, seed_value):
        yield from streamed(state, lambda: arena.ask(state, text, resolve_decoding(
            d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value)), clear_prompt=True)

    def ask_again(state, text, temp, p, max_new, seed_value):
        yield from streamed(state, lambda: arena.regenerate(state, resolve_decoding(
            d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value)), clear_prompt=False)

    def next_from_queue(state: ArenaSession, selected: list[str], is_blind: bool):
        try:
            assignment = arena.take_assignment(state, selected, is_blind)
        except UserError as err:
            yield (state, status_line(str(err), ok=False), gr.update(), progress_markdown(arena, state),
                   *render(state, reset_form=False))
            return
        if assignment is None:
            yield state, status_line(QUEUE_EMPTY), gr.update(), progress_markdown(arena, state), *render(state)
            return
        yield from streamed(state, lambda: arena.ask_queue(state, assignment), clear_prompt=False)

    ask_inputs = [session, prompt, *decoding_inputs]
    ask_outputs = [session, status, prompt, progress, *view]
    limit = cfg.app.concurrent_comparisons
    asking = [
        send.click(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        prompt.submit(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        regenerate.click(ask_again, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        queue_next.click(next_from_queue, [session, contestants, blind], ask_outputs, concurrency_limit=limit,
                         concurrency_id="generate"),
    ]

    def clear_panels(state: ArenaSession):
        arena.clear(state)
        return state, "", "", progress_markdown(arena, state), *render(state)

    clear.click(clear_panels, [session], [session, status, prompt, progress, *view], cancels=asking)
    for panel in panels:  # the chat's own trash icon: show the session's conversation again
        panel.chat.clear(lambda state: render(state, reset_form=False), [session], view)
    new_conversation.click(None, cancels=asking)

    # --- the guideline -------------------------------------------------------------------------
    def acknowledge_guideline(state: ArenaSession):
        try:
            message = arena.acknowledge_guideline(state)
        except UserError as err:
            return state, status_line(str(err), ok=False), *guideline_shown(True), *criteria_updates(state)
        return state, message, *guideline_shown(False), *criteria_updates(state)

    open_guideline.click(lambda: guideline_shown(True), None, [guideline_box, guideline_text])
    acknowledge.click(acknowledge_guideline, [session], [session, status, guideline_box, guideline_text,
                                                         *score_radios])

    # --- judging -------------------------------------------------------------------------------
    def judged(state: ArenaSession, judge, clear_correction: bool = False, reset_form: bool = True):
        """Outputs of ``judge_outputs``: the confirmation, or the reason it was refused (the form stays as it
        is, so the clinician can fix one field; the guideline is shown when it must be read first)."""
        try:
            message = judge()
        except UserError as err:
            unchanged = [gr.update() for _ in view]
            unchanged[radio_slice] = criteria_updates(state)  # a newer guideline may have new criteria
            shown = guideline_shown() if isinstance(err, GuidelineUnread) else [gr.update(), gr.update()]
            return (state, status_line(str(err), ok=False), gr.update(), gr.update(), *shown,
                    progress_markdown(arena, state), *unchanged)
        return (state, message, "", "" if clear_correction else gr.update(), gr.update(visible=False), gr.update(),
                progress_markdown(arena, state), *render(state, reset_form=reset_form))

    judge_outputs = [session, status, reason, correction, guideline_box, guideline_text, progress, *view]
    for choice, button in vote_buttons.items():
        def vote(state, why, *scores, choice=choice):
            return judged(state, lambda: arena.vote(state, choice, why, scores_from(state, list(scores))))
        button.click(vote, [session, reason, *score_radios], judge_outputs)

    def submit_ranking(state, why, *values):
        chosen = dict(zip(PANEL_LABELS, values[:len(PANEL_LABELS)]))
        return judged(state, lambda: arena.rank(state, chosen, why,
                                                scores_from(state, list(values[len(PANEL_LABELS):]))))

    rank.click(submit_ranking, [session, reason, *places, *score_radios], judge_outputs)

    def submit_better(state, text, why, *scores):
        return judged(state, lambda: arena.correct(state, text, why, scores_from(state, list(scores))),
                      clear_correction=True)

    submit_correction.click(submit_better, [session, correction, reason, *score_radios], judge_outputs)

    for label, up, button in rate_buttons:
        def rate_answer(state, text, why, label=label, up=up):  # not "rate": that name is the API's /rate
            return judged(state, lambda: arena.rate(state, label, up, text, why), clear_correction=True,
                          reset_form=False)
        button.click(rate_answer, [session, correction, reason], judge_outputs)
    return CompareTab(run, contestants, status, load=load,
                      load_outputs=[progress, guideline_box, guideline_text, *score_radios])
