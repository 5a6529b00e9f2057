"""The one conversation format of the models trained here: turns marked 问：/答： in plain text.

Chinese QA text writes turns this way (ChatGLM-6B's template did too). ChiMed-CPT's QA text
(``training/data/cpt.py``), the plain prompts the evaluation gives base and CPT
(``training/evaluation/prompts.py``) and the chat template saved with every stage's tokenizer all use
these markers, so a model meets the chat format in continued pre-training already: SFT starts from a
model that can answer a 问：/答： turn and keeps what CPT taught it, instead of having to learn role tokens
whose embeddings its LoRA adapter cannot train. No imports: the data builder uses it without torch.
"""

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
