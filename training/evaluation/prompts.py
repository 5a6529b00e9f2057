"""How a conversation becomes a prompt for each stage.

Instruction-tuned stages (the registry's chat stages: sft and the alignment stages) see the run's chat template, exactly as in
training and in the app (``apply_chat_template(messages, add_generation_prompt=True)``). The base and CPT
models get the conversation as plain text, each turn on its own line after the markers of
``training/chat_format.py``, and the prompt ends with 答： (the answer is the continuation). For the models
trained here the chat template uses the same markers (it adds only the end-of-sequence token after each
answer), so every stage reads the same question the same way; a model with a chat template of its own
(paper profile) keeps it.
"""

from __future__ import annotations

from training.chat_format import ASSISTANT_MARKER, USER_MARKER

PLAIN_MARKERS = {"system": "", "user": USER_MARKER, "assistant": ASSISTANT_MARKER}
# where a plain-text answer ends: the next turn's marker on a new line (the pool cuts there; an endpoint serving
# base or cpt sends them as its stop strings)
PLAIN_TURN_STOPS = ("\n" + USER_MARKER, "\n" + ASSISTANT_MARKER)


def conversation_prompt(tokenizer, messages: list[dict], chat: bool) -> str:
    """The text a stage continues with the assistant's next turn."""
    if chat:
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    lines = [PLAIN_MARKERS.get(m["role"], "") + m["content"] for m in messages]
    return "\n".join(lines + [PLAIN_MARKERS["assistant"]])


def cut_plain_answer(text: str) -> str:
    """A plain-text generation runs on into the next turn; keep what comes before it."""
    for marker in PLAIN_TURN_STOPS:
        text = text.split(marker, 1)[0]
    return text.strip()
