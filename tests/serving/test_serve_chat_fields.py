"""``serve``'s ``/v1/chat/completions`` fields beyond the arena's decoding: ``logprobs`` / ``top_logprobs``, ``n``,
vLLM's ``top_k``, ``min_p`` and ``repetition_penalty`` (sent through ``extra_body``) and ``chat_template_kwargs``,
checked with the official ``openai`` client and lm-eval's ``local-chat-completions`` against a real ``python -m
chimed serve --profile tiny`` process, the values against a direct forward pass of the same checkpoint
(``training.modeling.load_stage``) and the sampler's filters against transformers' own processors."""

from __future__ import annotations

import openai
import pytest
import torch
from transformers import MinPLogitsWarper, RepetitionPenaltyLogitsProcessor, TopKLogitsWarper

from app.serving.pool import prompt_ids
from app.serving.sampling import Decoding, SeededSampler, keep_top_k, min_p_keeps, penalise_repetition
from core.config import load_config
from core.errors import UserError
from core.registry import is_chat_stage
from tests.serving_helpers import no_account_client, serve_copy_of, stage_loader, write_lm_eval_task

MESSAGES = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]
TOL = 1e-4  # float32, as the pool serves on CPU


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(base URL, run id, an ``openai`` client, ``direct``) for one server on a private copy of the tiny run,
    without accounts; ``direct(stage)``: (model, tokenizer) of the stage loaded here with transformers."""
    with serve_copy_of(tiny_run, tmp_path_factory.mktemp("serve_chat_fields")) as (url, home, run_id):
        yield url, run_id, no_account_client(url), stage_loader(home, run_id)


def greedy(model, ids: list[int], n: int, eos: int, penalty: float = 1.0) -> list[int]:
    """n greedy tokens after ids (fewer when the end of sequence comes: it is included), with transformers'
    repetition penalty when one is given."""
    out = []
    for _ in range(n):
        with torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids + out])).logits[:, -1].float()
        if penalty != 1.0:
            logits = RepetitionPenaltyLogitsProcessor(penalty)(torch.tensor([ids + out]), logits)
        out.append(int(logits[0].argmax()))
        if out[-1] == eos:
            break
    return out


def check_content(content, model, tokenizer, ids: list[int], generated: list[int], top: int) -> None:
    """``content`` (a choice's ``logprobs.content``) is the model's log-softmax for the tokens of ``generated``
    it holds (the answer may end earlier, at a plain stage's next turn) after ``ids``, with the ``top`` best."""
    assert 0 < len(content) <= len(generated)
    whole = ids + generated
    with torch.inference_mode():
        expected = torch.log_softmax(model(input_ids=torch.tensor([whole])).logits[0, :-1].float(), dim=-1)
    for n, entry in enumerate(content):
        i = len(ids) + n
        assert entry.token == tokenizer.decode([whole[i]])
        if "\ufffd" not in entry.token:  # (a token holding part of a character has that part's bytes)
            assert entry.bytes == list(entry.token.encode("utf-8"))
        assert abs(entry.logprob - float(expected[i - 1, whole[i]])) < TOL
        best = expected[i - 1].topk(top)
        assert len(entry.top_logprobs) == top
        for alternative, token, value in zip(entry.top_logprobs, best.indices.tolist(), best.values.tolist()):
            assert alternative.token == tokenizer.decode([token])
            assert abs(alternative.logprob - value) < TOL
    # the tokens' bytes join up to the answer's text, characters split over tokens included
    joined = bytes(b for entry in content for b in entry.bytes).decode("utf-8", errors="replace")
    assert joined == tokenizer.decode(generated[: len(content)])


@pytest.mark.parametrize("stage", ["sft", "base"])  # a chat template on LoRA adapters, and plain turns
def test_logprobs_are_the_checkpoints_log_softmax_of_the_greedy_answer(served, stage):
    _, run_id, client, direct = served
    model, tokenizer = direct(stage)
    ids = prompt_ids(tokenizer, MESSAGES, chat=is_chat_stage(stage))
    generated = greedy(model, ids, 6, tokenizer.eos_token_id)
    settings = dict(model=f"{run_id}/{stage}", messages=MESSAGES, max_tokens=6, temperature=0, seed=3)
    reply = client.chat.completions.create(**settings, logprobs=True, top_logprobs=3)
    (choice,) = reply.choices
    check_content(choice.logprobs.content, model, tokenizer, ids, generated, 3)
    assert len(choice.logprobs.content) == reply.usage.completion_tokens + (generated[-1] == tokenizer.eos_token_id)
    plain = client.chat.completions.create(**settings)  # asking for logprobs changes nothing else
    assert plain.choices[0].message.content == choice.message.content and plain.choices[0].logprobs is None
    only = client.chat.completions.create(**settings, logprobs=True)  # top_logprobs left out: none
    assert all(entry.top_logprobs == [] for entry in only.choices[0].logprobs.content)


def test_n_choices_are_seeded_samples_reproducible_from_the_seed(served):
    _, run_id, client, _ = served
    settings = dict(model=f"{run_id}/sft", messages=MESSAGES, max_tokens=8, temperature=1.0)
    first = client.chat.completions.create(**settings, n=2, seed=11)
    again = client.chat.completions.create(**settings, n=2, seed=11)
    texts = [c.message.content for c in first.choices]
    assert [c.index for c in first.choices] == [0, 1]
    assert [c.message.content for c in again.choices] == texts
    assert texts[0] != texts[1]  # independent samples
    # choice i is the answer to the same request with seed + i
    assert [client.chat.completions.create(**settings, seed=seed).choices[0].message.content for seed in (11, 12)] == (
        texts
    )
    singles = [client.chat.completions.create(**settings, seed=seed).usage.completion_tokens for seed in (11, 12)]
    assert first.usage.completion_tokens == sum(singles)
    # greedy: every choice is the same answer
    greedy_choices = client.chat.completions.create(**settings | {"temperature": 0}, n=3, seed=11).choices
    assert len({c.message.content for c in greedy_choices}) == 1 and len(greedy_choices) == 3
    limit = load_config("tiny").app.max_n
    with pytest.raises(openai.BadRequestError, match=f"1-{limit} \\(app.max_n\\)") as err:
        client.chat.completions.create(**settings, n=limit + 1)
    assert err.value.param == "n"
    with pytest.raises(openai.BadRequestError, match="not streamed") as err:
        client.chat.completions.create(**settings, n=2, stream=True)
    assert err.value.param == "n"


def test_top_k_1_is_greedy_and_the_repetition_penalty_is_transformers(served):
    _, run_id, client, direct = served
    settings = dict(model=f"{run_id}/sft", messages=MESSAGES, max_tokens=10, seed=5)
    greedy_text = client.chat.completions.create(**settings, temperature=0).choices[0].message.content
    for seed in (5, 6):
        top_1 = client.chat.completions.create(**settings | {"seed": seed}, temperature=1.0, extra_body={"top_k": 1})
        assert top_1.choices[0].message.content == greedy_text
    sampled = client.chat.completions.create(**settings, temperature=1.0, extra_body={"top_k": 50, "min_p": 0.05})
    assert sampled.choices[0].message.content  # (accepted and sampled)

    # greedy with a penalty: the tokens transformers' processor picks (logprobs are the model's own, unpenalised)
    model, tokenizer = direct("sft")
    ids = prompt_ids(tokenizer, MESSAGES)
    penalised = greedy(model, ids, 10, tokenizer.eos_token_id, penalty=1.5)
    assert penalised != greedy(model, ids, 10, tokenizer.eos_token_id)  # the penalty matters here
    reply = client.chat.completions.create(
        **settings, temperature=0, logprobs=True, extra_body={"repetition_penalty": 1.5}
    )
    check_content(reply.choices[0].logprobs.content, model, tokenizer, ids, penalised, 0)


def test_the_samplers_filters_are_transformers_processors():
    torch.manual_seed(0)
    scores = torch.randn(3, 50) * 3
    ids = torch.tensor([[1, 4, 4, 9, 30], [0, 2, 3, 5, 49], [7, 7, 7, 7, 8]])
    for penalty in (1.3, 0.7):
        assert torch.equal(
            penalise_repetition(scores, ids, penalty), RepetitionPenaltyLogitsProcessor(penalty)(ids, scores.clone())
        )
    for k in (1, 5, 50):
        assert torch.equal(keep_top_k(scores, k), TopKLogitsWarper(k)(ids, scores.clone()))
    for min_p in (0.05, 0.3, 1.0):
        warped = MinPLogitsWarper(min_p)(ids, scores.clone())
        assert torch.equal(min_p_keeps(torch.softmax(scores, dim=-1), min_p), torch.isfinite(warped))
    # greedy with a penalty takes the penalised argmax; the left padding is not penalised
    decoding = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=4, seed=0, repetition_penalty=2.0).settings()
    logits = torch.tensor([[5.0, 4.0, 1.0, 0.0]])
    chosen = SeededSampler([decoding], [0], [torch.Generator()])(torch.tensor([[0, 2]]), logits.clone())
    assert chosen.argmax().item() == 1  # 5 / 2 < 4
    padded = SeededSampler([decoding], [1], [torch.Generator()])(torch.tensor([[0, 2]]), logits.clone())
    assert padded.argmax().item() == 0  # token 0 is padding only
    for bad in ({"top_k": -2}, {"top_k": 1.5}, {"min_p": 1.5}, {"repetition_penalty": 0}, {"repetition_penalty": 11}):
        with pytest.raises(UserError, match=next(iter(bad))):
            Decoding(temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0, **bad)
    # what the arena stores stays its four settings; the extras only when set
    assert set(Decoding(temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0).as_dict()) == {
        "temperature",
        "top_p",
        "max_new_tokens",
        "seed",
    }
    assert Decoding(temperature=1.0, top_p=1.0, max_new_tokens=4, seed=0, top_k=3).as_dict()["top_k"] == 3


def test_chat_template_kwargs_reach_the_template(served):
    _, run_id, client, direct = served
    _, tokenizer = direct("sft")
    template = tokenizer.chat_template
    try:  # a template with a variable: the prompt holds what the request sets
        tokenizer.chat_template = "{% if note %}{{ note }}{% endif %}" + template
        assert prompt_ids(tokenizer, MESSAGES, True, {"note": "注意"}) == (
            tokenizer("注意", add_special_tokens=False)["input_ids"] + prompt_ids(tokenizer, MESSAGES)
        )
    finally:
        tokenizer.chat_template = template
    settings = dict(model=f"{run_id}/sft", messages=MESSAGES, max_tokens=4, temperature=0)
    with_kwargs = client.chat.completions.create(**settings, extra_body={"chat_template_kwargs": {"x": 1}})
    assert (
        with_kwargs.choices[0].message.content == client.chat.completions.create(**settings).choices[0].message.content
    )


def test_bad_chat_fields_are_400_with_one_line(served):
    _, run_id, client, _ = served
    ok = dict(model=f"{run_id}/sft", messages=MESSAGES, max_tokens=2)
    refused = {
        "top_k": {"top_k": -2},
        "min_p": {"min_p": 2},
        "repetition_penalty": {"repetition_penalty": 0},
        "top_logprobs": {"logprobs": True, "top_logprobs": 21},
        "n": {"n": 0},
        "chat_template_kwargs": {"chat_template_kwargs": {"tokenize": False}},
        "frequency_penalty": {"frequency_penalty": 0.5},  # still not implemented
        "logit_bias": {"logit_bias": {"5": 1}},
    }
    for param, extra in refused.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(**ok, extra_body=extra)
        assert err.value.param == param and "\n" not in err.value.message, err.value.message
    with pytest.raises(openai.BadRequestError, match="needs logprobs=true"):
        client.chat.completions.create(**ok, top_logprobs=2)
    with pytest.raises(openai.BadRequestError, match="not streamed"):
        client.chat.completions.create(**ok, logprobs=True, stream=True)
    with pytest.raises(openai.BadRequestError, match="plain stage") as err:
        client.chat.completions.create(**ok | {"model": f"{run_id}/base"}, extra_body={"chat_template_kwargs": {}})
    assert err.value.param == "chat_template_kwargs"


TASK = "chimed_tiny_generate"


def test_lm_eval_local_chat_completions_sends_logprobs_and_n(served, tmp_path, monkeypatch):
    import lm_eval  # (the test extra's; imported here: it is slow to import)
    from lm_eval.models.openai_completions import LocalChatCompletion
    from lm_eval.tasks import TaskManager

    url, run_id, _, _ = served
    questions = [
        {"question": "高血压患者饮食上要注意什么？", "answer": "低盐"},
        {"question": "感冒了怎么办？", "answer": "休息"},
    ]
    task = write_lm_eval_task(
        tmp_path / "task",
        TASK,
        questions,
        "output_type: generate_until\n"
        'doc_to_text: "{{question}}"\n'
        'doc_to_target: "{{answer}}"\n'
        "generation_kwargs:\n"
        '  until: ["\\n\\n"]\n'
        "  max_gen_toks: 6\n"
        "  temperature: 0\n"
        "  n: 2\n"
        "  logprobs: true\n"
        "  top_logprobs: 2\n"
        "metric_list:\n  - metric: exact_match\n",
    )
    replies = []
    parse = LocalChatCompletion.parse_generations

    def recording(self, outputs, **kwargs):
        replies.extend(outputs if isinstance(outputs, list) else [outputs])
        return parse(self, outputs, **kwargs)

    monkeypatch.setattr(LocalChatCompletion, "parse_generations", recording)
    results = lm_eval.simple_evaluate(
        model="local-chat-completions",
        model_args={"model": f"{run_id}/sft", "base_url": f"{url}/chat/completions", "max_retries": 1},
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(task)),
        apply_chat_template=True,
        log_samples=True,
    )
    assert results["results"][TASK]["exact_match,none"] in (0.0, 0.5, 1.0)
    assert len(replies) == len(questions)
    for reply in replies:  # what lm-eval asked for came back: two (greedy, hence equal) choices with logprobs
        first, second = reply["choices"]
        assert first["message"]["content"] == second["message"]["content"]
        assert all(len(entry["top_logprobs"]) == 2 for entry in first["logprobs"]["content"])
    generated = [sample["resps"][0][0] for sample in results["samples"][TASK]]
    assert sorted(generated) == sorted(reply["choices"][0]["message"]["content"] for reply in replies)
