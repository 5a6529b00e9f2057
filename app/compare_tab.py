"""The Compare tab: 2-4 contestants answer one prompt side by side; the clinician votes, ranks or
writes a better answer.

The callbacks here only translate between components and :class:`app.arena.Arena`; the arena talks
to the model pool and the preference store. A mistake the user can fix (an empty prompt, a missing
place in a ranking) is shown in the status line, never as a traceback.
"""

from __future__ import annotations

import html
from dataclasses import dataclass

import gradio as gr

from app.arena import CHOICE_NAMES, Arena, ArenaSession, resolve_decoding
from app.contestants import available_contestants, completed_runs, default_checkpoints, run_checkpoints
from preference_store.guidelines import DEFAULT_CRITERIA
from preference_store.records import MAX_CONTESTANTS, PANEL_LABELS
from training.errors import UserError

CRITERIA = tuple(c.key for c in DEFAULT_CRITERIA)
CRITERION_NAMES = {c.key: c.name for c in DEFAULT_CRITERIA}


@dataclass
class PanelWidgets:
    column: gr.Column
    header: gr.Markdown
    chat: gr.Chatbot
    place: gr.Dropdown
    scores: list[gr.Radio]  # one per criterion, in CRITERIA order


@dataclass
class CompareTab:
    """The components :mod:`app.main` fills at page load."""

    run: gr.Dropdown
    contestants: gr.CheckboxGroup
    status: gr.Markdown


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


def render(session: ArenaSession, reset_form: bool = True) -> list:
    """Component updates showing ``session``, in the order of the tab's ``view`` list: per panel its
    header, chat, visibility, ranking place and score radios, then the vote row and the ranking row.
    ``reset_form`` empties the places and scores (a new answer set or a stored judgment)."""
    n = len(session.panels)
    headers, chats, columns, places, radios = [], [], [], [], []
    for i, label in enumerate(PANEL_LABELS):
        present = i < n
        columns.append(gr.update(visible=present))
        headers.append(gr.update(value=f"### {html.escape(session.header(label))}" if present else ""))
        chats.append(gr.update(value=list(session.panels[i].display) if present else []))
        rankable = n > 2 and label in session.judgeable and not session.voted
        choices = list(range(1, len(session.judgeable) + 1)) if rankable else []
        places.append(gr.update(choices=choices, value=None, visible=rankable) if reset_form
                      else gr.update(choices=choices, visible=rankable))
        radios += [gr.update(value=None) if reset_form else gr.update() for _ in CRITERIA]
    judged_pairwise = len(session.judgeable) == 2 or (n == 2 and not session.judgeable)
    return [*headers, *chats, *columns, *places, *radios,
            gr.update(visible=judged_pairwise), gr.update(visible=n > 2 and len(session.judgeable) != 2)]


def scores_from(values: list) -> dict[str, dict]:
    """The 4 x 3 score radios, flattened panel by panel, as {label: {criterion: value}}."""
    per_panel = len(CRITERIA)
    return {label: dict(zip(CRITERIA, values[i * per_panel:(i + 1) * per_panel]))
            for i, label in enumerate(PANEL_LABELS)}


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
    with gr.Accordion("解码设置 Decoding settings", open=False):
        with gr.Row():
            temperature = gr.Slider(0.0, d.max_temperature, value=d.temperature, step=0.05,
                                    label="temperature (0 = greedy)")
            top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top-p")
            max_new_tokens = gr.Number(value=d.max_new_tokens, precision=0, minimum=1, label="max new tokens")
            seed = gr.Number(value=d.seed, precision=0, minimum=-1, label="seed (-1 = random, stored with each answer)")

    panels = []
    with gr.Row():
        for label in PANEL_LABELS:
            with gr.Column(min_width=220, elem_id=f"panel-{label}") as column:
                header = gr.Markdown(f"### 模型 {label}", elem_id=f"header-{label}")
                chat = gr.Chatbot(label=f"模型 {label}", show_label=False, height=360, elem_id=f"chat-{label}",
                                  elem_classes=["arena-chat"], feedback_options=None, buttons=["copy"])
                place = gr.Dropdown(label=f"{label} 名次 place (1 = 最好 best)", choices=[], visible=False,
                                    elem_id=f"place-{label}")
                with gr.Accordion(f"{label} 评分 scores (1-5, 可选 optional)", open=False, elem_id=f"scores-{label}"):
                    radios = [gr.Radio([1, 2, 3, 4, 5], value=None, label=CRITERION_NAMES[c],
                                       elem_id=f"score-{label}-{c}") for c in CRITERIA]
            panels.append(PanelWidgets(column, header, chat, place, radios))

    with gr.Row():
        prompt = gr.Textbox(placeholder="输入问题，所有模型同时回答 / one question, every model answers",
                            show_label=False, lines=2, max_lines=8, scale=5, elem_id="prompt")
        send = gr.Button("发送 Send", variant="primary", scale=1, elem_id="send")
    with gr.Row():
        regenerate = gr.Button("重新生成 Regenerate", elem_id="regenerate")
        new_conversation = gr.Button("新对话 New conversation", elem_id="new-conversation")
        clear = gr.Button("清空 Clear", elem_id="clear")

    gr.Markdown("#### 评判 Judge")
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
            *score_radios, vote_row, rank_row]
    decoding_inputs = [temperature, top_p, max_new_tokens, seed]

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
        return state, message, *render(state)

    refresh.click(lambda selected: runs_and_contestants(cfg, selected), [contestants], [run, contestants, status])
    run.input(pick_run, [run], [contestants])
    # a new selection, a new blind setting or the button: a new conversation (new shuffle)
    for trigger in (contestants.change, blind.input, new_conversation.click):
        trigger(start, [session, contestants, blind], [session, status, *view])

    # --- asking --------------------------------------------------------------------------------
    def answer(state: ArenaSession, text: str, temp, p, max_new, seed_value, again: bool = False):
        working = status_line("… 生成中 generating")
        steps = None
        try:
            decoding = resolve_decoding(d, temperature=temp, top_p=p, max_new_tokens=max_new, seed=seed_value)
            steps = arena.regenerate(state, decoding) if again else arena.ask(state, text, decoding)
            state = next(steps)  # checks the prompt and starts the panels
            yield state, working, text if again else "", *render(state)
            for state in steps:
                yield state, working, gr.update(), *render(state, reset_form=False)
        except UserError as err:
            yield state, status_line(str(err), ok=False), gr.update(), *render(state, reset_form=False)
            return
        finally:
            if steps is not None:
                steps.close()  # when the browser cancels, the pool stops generating too
        done = (f"✓ 回答完毕 answers complete (seed {decoding.seed}). 请评判 Please judge."
                if state.comparison_id else "⚠ 少于两个回答，本轮无法评判 / fewer than two answers: nothing to judge")
        yield state, done, gr.update(), *render(state, reset_form=False)

    def ask(state, text, temp, p, max_new, seed_value):
        yield from answer(state, text, temp, p, max_new, seed_value)

    def ask_again(state, text, temp, p, max_new, seed_value):
        yield from answer(state, text, temp, p, max_new, seed_value, again=True)

    ask_inputs = [session, prompt, *decoding_inputs]
    ask_outputs = [session, status, prompt, *view]
    limit = cfg.app.concurrent_comparisons
    asking = [
        send.click(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        prompt.submit(ask, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
        regenerate.click(ask_again, ask_inputs, ask_outputs, concurrency_limit=limit, concurrency_id="generate"),
    ]

    def clear_panels(state: ArenaSession):
        arena.clear(state)
        return state, "", "", *render(state)

    clear.click(clear_panels, [session], [session, status, prompt, *view], cancels=asking)
    for panel in panels:  # the chat's own trash icon: show the session's conversation again
        panel.chat.clear(lambda state: render(state, reset_form=False), [session], view)
    new_conversation.click(None, cancels=asking)

    # --- judging -------------------------------------------------------------------------------
    def judged(state: ArenaSession, judge):
        try:
            message = judge()
        except UserError as err:  # leave the form as it is, so the clinician can fix one field
            return state, status_line(str(err), ok=False), gr.update(), *(gr.update() for _ in view)
        return state, message, "", *render(state)

    judge_outputs = [session, status, reason, *view]
    for choice, button in vote_buttons.items():
        def vote(state, why, *scores, choice=choice):
            return judged(state, lambda: arena.vote(state, choice, why, scores_from(list(scores))))
        button.click(vote, [session, reason, *score_radios], judge_outputs)

    def submit_ranking(state, why, *values):
        chosen = dict(zip(PANEL_LABELS, values[:len(PANEL_LABELS)]))
        return judged(state, lambda: arena.rank(state, chosen, why, scores_from(list(values[len(PANEL_LABELS):]))))

    rank.click(submit_ranking, [session, reason, *places, *score_radios], judge_outputs)

    def submit_better(state, text, why, *scores):
        result = judged(state, lambda: arena.correct(state, text, why, scores_from(list(scores))))
        ok = not result[1].startswith("⚠")
        return result[0], result[1], "" if ok else gr.update(), "" if ok else text, *result[3:]

    submit_correction.click(submit_better, [session, correction, reason, *score_radios],
                            [session, status, reason, correction, *view])
    return CompareTab(run, contestants, status)
