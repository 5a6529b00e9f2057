"""How any stage is prompted: the one conversation format of the models trained here, and how a conversation
becomes a prompt for each stage (training, evaluation, serving and the serve plan all read it here).

Turns are marked 问：/答： in plain text. Chinese QA text writes turns this way (ChatGLM-6B's template did too).
ChiMed-CPT's QA text (``training/data/cpt.py``), the plain prompts base and CPT get, and the chat template saved
with every stage's tokenizer all use these markers, so a model meets the chat format in continued pre-training
already: SFT starts from a model that can answer a 问：/答： turn and keeps what CPT taught it, instead of having to
learn role tokens whose embeddings its LoRA adapter cannot train.

Chat stages (the registry's ``Stage.chat``: sft and the alignment stages) see the run's chat template, exactly
as in training and in the app (``apply_chat_template(messages, add_generation_prompt=True)``). The base and CPT
models get the conversation as plain text, each turn on its own line after the markers, and the prompt ends with
答： (the answer is the continuation). For the models trained here the chat template uses the same markers (it adds
only the end-of-sequence token after each answer), so every stage reads the same question the same way; a model
with a chat template of its own (paper profile) keeps it. No imports: the data builder uses it without torch.
"""

from __future__ import annotations

USER_MARKER, ASSISTANT_MARKER = "问：", "答："


def plain_qa(question: str, answer: str) -> str:
    """One question and its answer as plain text: the lines ChiMed-CPT's QA text is made of."""
    return f"{USER_MARKER}{question}\n{ASSISTANT_MARKER}{answer}"


# One conversation: a system turn as its text, a user turn after 问：, an assistant turn after 答： closed
# by the end-of-sequence token (where generation stops: the turn's last trained token); each turn on a
# line of its own, and the generation prompt is 答：. Used for tiny/demo, and for a paper base model whose
# tokenizer has no template of its own (base checkpoints usually have none). The tokenizer's eos token
# is used rather than the literal "<|end|>" so that a foreign tokenizer ends turns with its own.
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if not loop.first and messages[loop.index0 - 1]['role'] == 'assistant' %}{{ '\\n' }}{% endif %}"
    "{% if message['role'] == 'user' %}{{ '" + USER_MARKER + "' + message['content'] + '\\n' }}"
    "{% elif message['role'] == 'assistant' %}{{ '" + ASSISTANT_MARKER + "' + message['content'] + eos_token }}"
    "{% else %}{{ message['content'] + '\\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '" + ASSISTANT_MARKER + "' }}{% endif %}"
)


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
