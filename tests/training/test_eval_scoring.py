"""The scorers of the evaluation on a tiny model trained here to know a few textbook facts: the option
scorer picks what it was trained to prefer, the shared-prefix cache changes no score, perplexity and
greedy generation agree with the model."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch

from core.prompting import conversation_prompt
from training.evaluation.exam import score_exam, split_demonstrations
from training.evaluation.generation import qa_generations, qa_metrics
from training.evaluation.loglik import make_request, score_requests, token_ids
from training.evaluation.perplexity import document_request, general_perplexity
from training.evaluation.preference import likelihood_accuracy, pair_logprobs

FACTS = json.loads((Path(__file__).parents[1] / "fixtures" / "eval" / "facts.json").read_text(encoding="utf-8"))[
    "facts"
]
LETTERS = "ABCD"


def _ask(fact: dict) -> list[dict]:
    return [{"role": "user", "content": fact["question"]}]


@pytest.fixture(scope="module")
def fact_model():
    """(model, tokenizer): a tiny LLaMA that has memorized each question followed by its right answer."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from training.recipes.base import train_bpe_tokenizer

    torch.manual_seed(0)
    texts = [conversation_prompt(None, _ask(f), chat=False) + f["answer"] for f in FACTS]
    wrong = [w for f in FACTS for w in f["wrong"]]  # in the tokenizer's corpus, never in the training text
    tokenizer = train_bpe_tokenizer(texts + wrong, vocab_size=320)
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=4,
            max_position_embeddings=256,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    seqs = [[tokenizer.eos_token_id] + token_ids(tokenizer, t) + [tokenizer.eos_token_id] for t in texts]
    width = max(map(len, seqs))
    ids = torch.tensor([s + [tokenizer.pad_token_id] * (width - len(s)) for s in seqs])
    labels = torch.tensor([s + [-100] * (width - len(s)) for s in seqs])
    optimizer = torch.optim.AdamW(model.parameters(), lr=5e-3)
    model.train()
    for _ in range(300):
        loss = model(input_ids=ids, labels=labels).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()
    # what follows each question is learned exactly; only which question comes first stays uncertain
    assert loss.item() < 0.3, f"the tiny model did not memorize the facts (loss {loss.item():.3f})"
    return model, tokenizer


def _exam_items() -> list[dict]:
    """Each fact as a four-option question; the right answer moves through A, B, C, D."""
    items = []
    for i, fact in enumerate(FACTS):
        options = list(fact["wrong"])
        options.insert(i % 4, fact["answer"])
        items.append(
            {
                "id": str(i),
                "question": fact["question"],
                "options": dict(zip(LETTERS, options)),
                "answer": LETTERS[i % 4],
                "subject": "test",
            }
        )
    return items


def test_option_scorer_picks_the_option_the_model_was_trained_to_prefer(fact_model):
    model, tokenizer = fact_model
    items = _exam_items()
    assert len({it["answer"] for it in items}) == 4  # a scorer stuck on one letter cannot pass
    result = score_exam(model, tokenizer, items, [], chat=False, batch_size=5, max_length=256)
    assert result["n"] == len(items)
    assert result["acc"] == 1.0
    lo, hi = result["ci95"]
    assert 0.5 < lo < 1.0 and hi == pytest.approx(1.0)


def test_k_shot_demonstrations_are_not_scored_and_keep_the_choice(fact_model):
    model, tokenizer = fact_model
    demos, scored = split_demonstrations(_exam_items(), k=2, seed=1)
    assert len(demos) == 2 and len(scored) == len(FACTS) - 2
    assert not {d["id"] for d in demos} & {s["id"] for s in scored}
    assert split_demonstrations(_exam_items(), k=2, seed=1)[0] == demos  # the draw is seeded
    result = score_exam(model, tokenizer, scored, demos, chat=False, batch_size=3, max_length=256)
    assert result["n"] == len(scored) and result["acc"] == 1.0


def test_shared_prefix_cache_gives_the_same_scores_as_full_sequences(fact_model):
    model, tokenizer = fact_model
    prefix = "\n".join(conversation_prompt(None, _ask(f), chat=False) + f["answer"] for f in FACTS[:4]) + "\n"
    requests = [
        make_request(tokenizer, prefix + conversation_prompt(None, _ask(f), chat=False), option, 256)
        for f in FACTS
        for option in [f["answer"], *f["wrong"]]
    ]
    assert len(token_ids(tokenizer, prefix)) >= 16  # long enough for the cache to be used
    cached = score_requests(model, requests, batch_size=7)
    with torch.inference_mode():
        for request, score in zip(requests, cached, strict=True):
            ids = torch.tensor([list(request.context) + list(request.continuation)])
            logprobs = model(input_ids=ids).logits[0, :-1].log_softmax(-1)
            targets = ids[0, 1:]
            start = len(request.context) - 1
            expected = logprobs[start:, :].gather(-1, targets[start:, None]).sum().item()
            assert score.tokens == len(request.continuation)
            assert score.logprob == pytest.approx(expected, abs=1e-3)


def test_perplexity_matches_the_models_own_loss(fact_model):
    model, tokenizer = fact_model
    text = conversation_prompt(None, _ask(FACTS[0]), chat=False) + FACTS[0]["answer"]
    request = document_request(tokenizer, text, max_length=256)
    ids = torch.tensor([list(request.context) + list(request.continuation)])
    with torch.inference_mode():
        loss = model(input_ids=ids, labels=ids).loss.item()
    assert general_perplexity(model, tokenizer, [text], batch_size=2, max_length=256) == pytest.approx(
        math.exp(loss), rel=1e-3
    )
    unseen = "今天天气很好，我们去公园散步。"
    assert general_perplexity(model, tokenizer, [unseen], 2, 256) > 10 * general_perplexity(
        model, tokenizer, [text], 2, 256
    )


def test_greedy_answers_reproduce_what_the_model_learned(fact_model):
    model, tokenizer = fact_model
    records = [{"id": str(i), "messages": _ask(f), "reference": f["answer"]} for i, f in enumerate(FACTS)]
    generations = qa_generations(model, tokenizer, records, chat=False, max_new_tokens=12, batch_size=4, max_length=256)
    assert [g["answer"] for g in generations] == [f["answer"] for f in FACTS]
    metrics = qa_metrics(generations)
    assert metrics["bleu1"] == pytest.approx(1.0) and metrics["rouge1"] == pytest.approx(1.0)
    assert metrics["rougeL"] == pytest.approx(1.0)


def test_likelihood_prefers_the_learned_answer_of_each_pair(fact_model):
    model, tokenizer = fact_model
    pairs = [
        {
            "prompt": _ask(f),
            "chosen": [{"role": "assistant", "content": f["answer"]}],
            "rejected": [{"role": "assistant", "content": f["wrong"][0]}],
        }
        for f in FACTS
    ]
    logprobs = pair_logprobs(model, tokenizer, pairs, chat=False, batch_size=4, max_length=256)
    assert likelihood_accuracy(logprobs) == 1.0
    swapped = [{**p, "chosen": p["rejected"], "rejected": p["chosen"]} for p in pairs]
    assert likelihood_accuracy(pair_logprobs(model, tokenizer, swapped, False, 4, 256)) == 0.0


def test_long_requests_are_cut_to_the_context_keeping_the_continuation(fact_model):
    _, tokenizer = fact_model
    request = make_request(tokenizer, "问：" + "很长的问题" * 50, "铁剂", max_length=32)
    assert len(request.context) + len(request.continuation) == 32
    assert tokenizer.decode(list(request.continuation)) == "铁剂"
    assert tokenizer.decode(list(request.context)).endswith("很长的问题")  # the question's start was cut
