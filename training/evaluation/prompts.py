"""How a conversation becomes a prompt for each stage.

Instruction-tuned stages (``cfg.eval.chat_stages``: sft, dpo) see the run's chat template, exactly as in
training and in the app (``apply_chat_template(messages, add_generation_prompt=True)``). The base and CPT
models never saw the template's role markers, so they get the same conversation as plain text, each turn
on its own line after 问：/答：, and the prompt ends with 答： (the answer is the continuation).
"""

from __future__ import annotations

PLAIN_MARKERS = {"system": "", "user": "问：", "assistant": "答："}


def conversation_prompt(tokenizer, messages: list[dict], chat: bool) -> str:
    """The text a stage continues with the assistant's next turn."""
    if chat:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [PLAIN_MARKERS.get(m["role"], "") + m["content"] for m in messages]
    return "\n".join(lines + [PLAIN_MARKERS["assistant"]])


def cut_plain_answer(text: str) -> str:
    """A plain-text generation runs on into the next turn; keep what comes before it."""
    for marker in ("\n" + PLAIN_MARKERS["user"], "\n" + PLAIN_MARKERS["assistant"]):
        text = text.split(marker, 1)[0]
    return text.strip()
