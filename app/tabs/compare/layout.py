"""The Compare tab's components, laid out in the current ``gr.Tab``: the contestants and decoding settings, one
column per panel (chat, ranking place, score rows, 👍/👎), the prompt with its identifier box, and the judging
controls. No events here: :mod:`app.tabs.compare.asking` and :mod:`app.tabs.compare.judging` wire them.
"""

from __future__ import annotations

from dataclasses import dataclass

import gradio as gr

from app.arena import ACK_LABEL, CHOICE_NAMES
from app.tabs.compare.views import THUMBS, PanelWidgets
from preference_store.records import MAX_CONTESTANTS, PANEL_LABELS
from preference_store.rubric import DEFAULT_CRITERIA, MAX_CRITERIA


@dataclass
class CompareLayout:
    """Every component of the tab, and the lists its events read and update (``view``: what
    :func:`app.tabs.compare.views.render` fills, in its order)."""

    run: gr.components.Component
    refresh: gr.components.Component
    blind: gr.components.Component
    contestants: gr.components.Component
    temperature: gr.components.Component
    top_p: gr.components.Component
    max_new_tokens: gr.components.Component
    seed: gr.components.Component
    queue_next: gr.components.Component
    progress: gr.components.Component
    panels: list[PanelWidgets]
    rate_buttons: list
    prompt: gr.components.Component
    send: gr.components.Component
    deid_box: gr.components.Component
    deid_summary: gr.components.Component
    deid_preview: gr.components.Component
    deid_send: gr.components.Component
    deid_edit: gr.components.Component
    regenerate: gr.components.Component
    new_conversation: gr.components.Component
    clear: gr.components.Component
    open_guideline: gr.components.Component
    guideline_box: gr.components.Component
    guideline_text: gr.components.Component
    acknowledge: gr.components.Component
    vote_row: gr.components.Component
    vote_buttons: dict
    rank_row: gr.components.Component
    rank: gr.components.Component
    reason: gr.components.Component
    correction: gr.components.Component
    submit_correction: gr.components.Component
    status: gr.components.Component
    places: list
    score_radios: list
    view: list
    radio_slice: slice
    decoding_inputs: list
    deid_outputs: list

    def ask_outputs(self, session: gr.State) -> list:
        """What asking updates: the session, the status line, the prompt box, the queue line, the panels and the
        identifier box."""
        return [
            session,
            self.status,
            self.prompt,
            self.progress,
            *self.view,
            *self.deid_outputs,
        ]

    def judge_outputs(self, session: gr.State) -> list:
        """What a judgment updates: also the reason and correction boxes and the guideline box."""
        return [
            session,
            self.status,
            self.reason,
            self.correction,
            self.guideline_box,
            self.guideline_text,
            self.progress,
            *self.view,
            *self.deid_outputs,
        ]


def lay_out(cfg) -> CompareLayout:
    """Lay out the Compare tab inside the current ``gr.Tab``."""
    d = cfg.app.decoding
    with gr.Row():
        run = gr.Dropdown(
            label="训练运行 Run (选择后填入其四个阶段 picks its four stages)",
            choices=[],
            scale=2,
            elem_id="run-choice",
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
    with gr.Accordion(
        "解码设置 Decoding settings (队列题使用统一设置 queue prompts use the shared ones)",
        open=False,
    ):
        with gr.Row():
            temperature = gr.Slider(
                0.0,
                d.max_temperature,
                value=d.temperature,
                step=0.05,
                label="temperature (0 = greedy)",
            )
            top_p = gr.Slider(0.05, 1.0, value=d.top_p, step=0.05, label="top-p")
            max_new_tokens = gr.Number(value=d.max_new_tokens, precision=0, minimum=1, label="max new tokens")
            seed = gr.Number(
                value=d.seed,
                precision=0,
                minimum=-1,
                label="seed (-1 = random, stored with each answer)",
            )
    with gr.Row(equal_height=True, elem_id="queue-row"):
        queue_next = gr.Button(
            "下一题 Next from my queue",
            variant="secondary",
            scale=0,
            elem_id="queue-next",
        )
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
                    label=f"{label} 名次 place (1 = 最好 best)",
                    choices=[],
                    visible=False,
                    elem_id=f"place-{label}",
                )
                with gr.Accordion(
                    f"{label} 评分 scores (1-5, 可选 optional)",
                    open=False,
                    elem_id=f"scores-{label}",
                ):
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
    with gr.Row(visible=False, elem_id="vote-row") as vote_row:
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
    return CompareLayout(
        run=run,
        refresh=refresh,
        blind=blind,
        contestants=contestants,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        queue_next=queue_next,
        progress=progress,
        panels=panels,
        rate_buttons=rate_buttons,
        prompt=prompt,
        send=send,
        deid_box=deid_box,
        deid_summary=deid_summary,
        deid_preview=deid_preview,
        deid_send=deid_send,
        deid_edit=deid_edit,
        regenerate=regenerate,
        new_conversation=new_conversation,
        clear=clear,
        open_guideline=open_guideline,
        guideline_box=guideline_box,
        guideline_text=guideline_text,
        acknowledge=acknowledge,
        vote_row=vote_row,
        vote_buttons=vote_buttons,
        rank_row=rank_row,
        rank=rank,
        reason=reason,
        correction=correction,
        submit_correction=submit_correction,
        status=status,
        places=places,
        score_radios=score_radios,
        view=view,
        radio_slice=radio_slice,
        decoding_inputs=decoding_inputs,
        deid_outputs=deid_outputs,
    )
