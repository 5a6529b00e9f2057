"""``serve``'s ``/v1/completions`` as vLLM implements it, ``/health`` and ``max_model_len``: checked with the
official ``openai`` client and lm-eval's ``local-completions`` model against a real ``python -m chimed serve
--profile tiny`` process, the log-probabilities against a direct forward pass of the same checkpoint with
transformers (``training.modeling.load_stage``)."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

import httpx
import openai
import pytest
import torch
from fastapi.testclient import TestClient
from openai import OpenAI

from app.contestants import resolve_contestants
from app.openai_server import build_server
from core.config import load_config
from preference_store.repository import PreferenceStore
from tests.serving.test_serve import copy_home
from tests.serving_helpers import no_account_client, serve_copy_of, stage_loader, worker_pids, write_lm_eval_task
from training.evaluation.loglik import token_ids
from training.modeling import stage_chain, tokenizer_dir

TEXT = "高血压患者饮食上要注意低盐，"
ASCII = "Blood pressure, heart rate."
TOL = 1e-4  # float32, as the pool serves on CPU


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(base URL, home, run id) of one server on a private copy of the tiny run, without accounts."""
    with serve_copy_of(tiny_run, tmp_path_factory.mktemp("serve_completions")) as served:
        yield served


@pytest.fixture(scope="module")
def direct(served):
    """``direct(stage)``: (model, tokenizer) of the stage loaded with transformers in this process (LoRA merged)."""
    return stage_loader(served[1], served[2])


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return no_account_client(served[0])


def log_softmax(model, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1, vocab]: the log-probabilities of the token after each of ids[:-1]."""
    with torch.inference_mode():
        return torch.log_softmax(model(input_ids=torch.tensor([ids])).logits[0, :-1].float(), dim=-1)


def greedy(model, ids: list[int], n: int, eos: int) -> list[int]:
    """n greedy tokens after ids (fewer when the end of sequence comes: it is included)."""
    out = []
    for _ in range(n):
        with torch.inference_mode():
            token = int(model(input_ids=torch.tensor([ids + out])).logits[0, -1].argmax())
        out.append(token)
        if token == eos:
            break
    return out


def check_logprobs(logprobs, model, tokenizer, ids: list[int], start: int, top: int) -> None:
    """``logprobs`` (a choice's) are the model's log-softmax values for ids[start:], with the ``top`` best."""
    expected = log_softmax(model, ids)
    assert logprobs.tokens == [tokenizer.decode([t]) for t in ids[start:]]
    for n, i in enumerate(range(start, len(ids))):
        if i == 0:  # nothing predicts the first token
            assert logprobs.token_logprobs[n] is None and logprobs.top_logprobs[n] is None
            continue
        assert abs(logprobs.token_logprobs[n] - float(expected[i - 1, ids[i]])) < TOL
        best = expected[i - 1].topk(top)
        alternatives = logprobs.top_logprobs[n]
        assert alternatives[logprobs.tokens[n]] == logprobs.token_logprobs[n]  # the token itself, first
        seen = {logprobs.tokens[n]}
        for token, value in zip(best.indices.tolist(), best.values.tolist()):
            key = tokenizer.decode([token])
            if key not in seen:  # (ids that decode alike, e.g. parts of one character: the likelier one is given)
                seen.add(key)
                assert abs(alternatives[key] - value) < TOL
        assert set(alternatives) == seen
    assert logprobs.text_offset == [sum(len(t) for t in logprobs.tokens[:n]) for n in range(len(logprobs.tokens))]


def test_echo_with_max_tokens_0_scores_the_prompt_with_the_models_own_log_softmax(served, client, direct):
    _, _, run_id = served
    for stage in ("base", "dpo"):  # a full model, and LoRA adapters on cpt (+ sft)
        model, tokenizer = direct(stage)
        reply = client.completions.create(
            model=f"{run_id}/{stage}", prompt=TEXT, max_tokens=0, echo=True, logprobs=5, temperature=0
        )
        (choice,) = reply.choices
        ids = token_ids(tokenizer, TEXT)
        assert (choice.text, choice.finish_reason, choice.index) == (TEXT, "length", 0)
        assert (reply.usage.prompt_tokens, reply.usage.completion_tokens) == (len(ids), 0)
        check_logprobs(choice.logprobs, model, tokenizer, ids, 0, 5)
    # each token decoded alone joins up to the text where every token holds whole characters
    ascii_reply = client.completions.create(model=f"{run_id}/sft", prompt=ASCII, max_tokens=0, echo=True, logprobs=0)
    logprobs = ascii_reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == ASCII == ascii_reply.choices[0].text
    assert all(len(top) == 1 for top in logprobs.top_logprobs[1:])  # logprobs=0: the token itself only


def test_a_generated_completion_and_its_logprobs_are_the_models_greedy_tokens(served, client, direct):
    _, _, run_id = served
    model, tokenizer = direct("sft")
    ids = token_ids(tokenizer, TEXT)
    expected = greedy(model, ids, 6, tokenizer.eos_token_id)
    for echo in (False, True):
        reply = client.completions.create(
            model=f"{run_id}/sft", prompt=TEXT, max_tokens=6, temperature=0, logprobs=3, echo=echo, seed=3
        )
        (choice,) = reply.choices
        completion = tokenizer.decode(expected, skip_special_tokens=True)
        assert choice.text == (TEXT if echo else "") + completion.replace("\ufffd", "")
        assert reply.usage.completion_tokens == len(expected) and reply.usage.prompt_tokens == len(ids)
        assert choice.finish_reason == ("stop" if expected[-1] == tokenizer.eos_token_id else "length")
        check_logprobs(choice.logprobs, model, tokenizer, ids + expected, 0 if echo else len(ids), 3)
        # greedy: every completion token is the most likely one (what lm-eval's is_greedy checks)
        for value, top in list(zip(choice.logprobs.token_logprobs, choice.logprobs.top_logprobs))[-len(expected) :]:
            assert value == max(top.values())


def test_token_id_prompts_and_lists_of_prompts(served, client, direct):
    _, _, run_id = served
    model, tokenizer = direct("cpt")
    texts = [TEXT, "糖尿病患者需要控制饮食，"]
    ids = [token_ids(tokenizer, text) for text in texts]

    def scored(prompt):
        return client.completions.create(model=f"{run_id}/cpt", prompt=prompt, max_tokens=0, echo=True, logprobs=1)

    by_text, by_ids, one_id = scored(texts), scored(ids), scored(ids[1])
    assert [c.index for c in by_ids.choices] == [0, 1]
    assert [c.text for c in by_text.choices] == texts == [c.text for c in by_ids.choices]  # ids echoed as text
    values = [c.logprobs.token_logprobs for c in by_ids.choices]
    assert [c.logprobs.token_logprobs for c in by_text.choices] == values  # the same as text or as token ids
    assert one_id.choices[0].logprobs.token_logprobs == values[1]
    check_logprobs(by_ids.choices[1].logprobs, model, tokenizer, ids[1], 0, 1)
    # a list of prompts is answered as each alone (greedy), one choice each, in order
    together = client.completions.create(model=f"{run_id}/cpt", prompt=texts, max_tokens=5, temperature=0)
    alone = [client.completions.create(model=f"{run_id}/cpt", prompt=t, max_tokens=5, temperature=0) for t in texts]
    assert [c.text for c in together.choices] == [a.choices[0].text for a in alone]
    assert [c.index for c in together.choices] == [0, 1]
    assert together.usage.prompt_tokens == sum(len(i) for i in ids)
    # a seed makes a sampled completion reproducible; stop ends it before the stop string
    sampled = [
        client.completions.create(model=f"{run_id}/cpt", prompt=TEXT, max_tokens=12, temperature=1.0, top_p=0.9, seed=7)
        for _ in range(2)
    ]
    assert sampled[0].choices[0].text == sampled[1].choices[0].text
    long = sampled[0].choices[0].text
    stop = [ch for ch in long if ch.strip()][2]  # the answer's third visible character
    cut = client.completions.create(
        model=f"{run_id}/cpt", prompt=TEXT, max_tokens=12, temperature=1.0, top_p=0.9, seed=7, stop=[stop]
    )
    assert cut.choices[0].text == long[: long.index(stop)] and cut.choices[0].text
    assert cut.choices[0].finish_reason == "stop"


def test_models_give_max_model_len_and_prompts_over_the_context_are_refused(served, client):
    url, _, run_id = served
    context = load_config("tiny").model.max_position_embeddings
    models = httpx.get(f"{url}/models", timeout=60).json()["data"]
    assert {m["id"]: m["max_model_len"] for m in models} == {
        f"{run_id}/{stage}": context for stage in ("base", "cpt", "sft", "dpo")
    }
    ids = [5] * (context - 4)
    fits = client.completions.create(model=f"{run_id}/sft", prompt=ids, max_tokens=4, temperature=0)
    assert fits.usage.prompt_tokens == context - 4  # prompt + max_tokens == context: read whole
    scored = client.completions.create(model=f"{run_id}/sft", prompt=[5] * context, max_tokens=0, echo=True, logprobs=0)
    assert len(scored.choices[0].logprobs.tokens) == context
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=f"{run_id}/sft", prompt=ids, max_tokens=5)
    assert (err.value.code, err.value.param) == ("context_length_exceeded", "prompt")
    assert err.value.body["message"].startswith(f"This model's maximum context length is {context} tokens.")
    assert f"your prompt contains {context - 4} input tokens" in err.value.body["message"]


def test_bad_completion_requests_are_400_with_one_line(served, client):
    url, _, run_id = served
    model = f"{run_id}/sft"
    bad = {
        "stream": ({"stream": True}, "unsupported_parameter"),
        "n": ({"n": 2}, "unsupported_parameter"),
        "best_of": ({"best_of": 3}, "unsupported_parameter"),
        "frobnicate": ({"frobnicate": 1}, "unrecognized_argument"),
        "logprobs": ({"logprobs": 21}, None),
        "logprobs ": ({"logprobs": -1}, None),
        "logprobs  ": ({"logprobs": True}, None),
        "max_tokens": ({"max_tokens": 0}, None),  # without echo
        "max_tokens ": ({"max_tokens": "4"}, None),
        "echo": ({"echo": "yes"}, None),
        "prompt": ({"prompt": []}, None),
        "prompt ": ({"prompt": [1.5, 2]}, None),
        "prompt  ": ({"prompt": ""}, None),
        "prompt   ": ({"prompt": [[1, 2], [10**9]]}, None),
        "prompt    ": ({"prompt": "头" * 5000}, "prompt_too_long"),
        "temperature": ({"temperature": 99}, None),
        "stop": ({"stop": ["a", "b", "c", "d", "e"]}, None),
    }
    for name, (fields, code) in bad.items():
        body = {"model": model, "prompt": TEXT, "max_tokens": 2} | fields
        reply = httpx.post(f"{url}/completions", json=body, timeout=60)
        error = reply.json()["error"]
        assert reply.status_code == 400, (name, reply.text)
        assert error["param"] == name.strip() and "\n" not in error["message"], (name, error)
        if code:
            assert error["code"] == code, (name, error)
    too_many = httpx.post(f"{url}/completions", json={"model": model, "prompt": "a", "logprobs": 21}, timeout=60)
    assert "0-20 (app.max_logprobs)" in too_many.json()["error"]["message"]
    unknown = httpx.post(f"{url}/completions", json={"model": "nope", "prompt": TEXT}, timeout=60)
    assert unknown.status_code == 404 and unknown.json()["error"]["code"] == "model_not_found"
    not_json = httpx.post(f"{url}/completions", content=b"[1]", timeout=60)
    assert not_json.status_code == 400
    typed = "我叫李明，电话13812345678，头痛三天"
    with pytest.raises(openai.BadRequestError) as err:
        client.completions.create(model=model, prompt=typed, max_tokens=1)
    assert err.value.code == "identifiers_found"
    redacted = client.completions.create(
        model=model, prompt=typed, max_tokens=0, echo=True, extra_body={"redact": True}
    )
    assert "13812345678" not in redacted.choices[0].text  # sent redacted when asked, as the chat endpoint does


def test_health_is_503_until_the_runs_stages_are_loaded_and_when_one_cannot_serve(served, tiny_run, make_pool):
    url, home, run_id = served
    for _ in range(600):  # the server preloads its run (app.preload_newest_run)
        health = httpx.get(url.removesuffix("/v1") + "/health", timeout=30)
        if health.status_code == 200:
            break
        assert health.status_code == 503 and health.json()["status"] == "loading"
        time.sleep(0.2)
    assert health.json() == {"status": "ok", "models": 4}
    with pytest.MonkeyPatch.context() as patch:  # in this process: nothing loaded yet, then loaded, then killed
        patch.setenv("CHIMED_HOME", str(home))
        cfg = load_config("tiny")
        pool = make_pool(cfg)
        with PreferenceStore.from_config(cfg) as store, TestClient(build_server(cfg, run_id, store, pool)) as http:
            before = http.get("/health")
            assert before.status_code == 503
            assert before.json()["not_ready"] == [f"{run_id}/{s}" for s in ("base", "cpt", "sft", "dpo")]
            contestants = resolve_contestants(cfg, [f"{run_id}/{s}" for s in ("base", "cpt", "sft", "dpo")])
            assert pool.preload(contestants) == [None] * 4
            assert http.get("/health").status_code == 200
            os.kill(worker_pids(pool)[0], 9)
            for _ in range(50):
                if http.get("/health").status_code == 503:
                    break
                time.sleep(0.1)
            assert http.get("/health").status_code == 503


def test_with_accounts_completions_need_a_token(tiny_run, tmp_path, use_home, make_pool):
    home, run_id = copy_home(tiny_run, tmp_path / "home")
    use_home(home)
    cfg = load_config("tiny")
    with PreferenceStore.from_config(cfg) as store:
        store.add_annotator("dr_li", "secret")
        token = store.create_api_token("dr_li")
        with TestClient(build_server(cfg, run_id, store, make_pool(cfg))) as http:
            body = {"model": f"{run_id}/sft", "prompt": TEXT, "max_tokens": 1}
            bare = http.post("/v1/completions", json=body)
            assert bare.status_code == 401 and bare.json()["error"]["code"] == "missing_api_key"
            wrong = http.post("/v1/completions", json=body, headers={"Authorization": "Bearer chimed-wrong"})
            assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "invalid_api_key"
            ok = http.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {token}"})
            assert ok.status_code == 200 and ok.json()["usage"]["prompt_tokens"] > 0


# --- lm-eval ----------------------------------------------------------------------------------------------

QUESTIONS = [  # general medical knowledge, correct answers
    {"question": "哪个器官分泌胰岛素？", "choices": ["胰腺", "肝脏", "肾脏", "心脏"], "answer": 0},
    {"question": "人体最大的器官是什么？", "choices": ["肺", "皮肤", "大脑"], "answer": 1},
    {"question": "红细胞的主要功能是什么？", "choices": ["凝血", "抵抗感染", "运输氧气"], "answer": 2},
]
TASK = "chimed_tiny_mc"


def write_task(folder: Path) -> Path:
    """A multiple-choice lm-eval task: YAML plus a local jsonl."""
    return write_lm_eval_task(
        folder,
        TASK,
        QUESTIONS,
        "output_type: multiple_choice\n"
        'doc_to_text: "问：{{question}}\\n答："\n'
        "doc_to_choice: choices\n"
        "doc_to_target: answer\n"
        "metric_list:\n  - metric: acc\n",
    )
    return folder


def test_lm_eval_local_completions_scores_the_stage_as_the_checkpoint_does(served, direct, tmp_path):
    import lm_eval  # (the test extra's; imported here: it is slow to import)
    from lm_eval.tasks import TaskManager

    url, home, run_id = served
    stage = "sft"
    model, tokenizer = direct(stage)
    tokenizer_path = tokenizer_dir(stage_chain(home / "runs" / run_id, stage))
    results = lm_eval.simple_evaluate(
        model="local-completions",
        model_args={
            "model": f"{run_id}/{stage}",
            "base_url": f"{url}/completions",
            "tokenizer_backend": "huggingface",
            "tokenizer": str(tokenizer_path),
            "tokenized_requests": True,
            "max_length": 255,
            "num_concurrent": 1,
            "max_retries": 1,
        },
        tasks=[TASK],
        task_manager=TaskManager(include_path=str(write_task(tmp_path / "task"))),
        log_samples=True,
    )
    acc = results["results"][TASK]["acc,none"]
    assert isinstance(acc, float) and math.isfinite(acc)
    # the same comparisons with the checkpoint: each choice's log-likelihood after the question, as lm-eval
    # tokenizes them (the context's tokens, then what the joined text adds)
    correct, served_ll = 0, {}
    for sample in results["samples"][TASK]:
        served_ll[sample["doc"]["question"]] = [resp[0][0] for resp in sample["resps"]]
    for question in QUESTIONS:
        context = f"问：{question['question']}\n答："
        lls = []
        for choice in question["choices"]:
            ctx = tokenizer(context, add_special_tokens=False)["input_ids"]
            whole = tokenizer(context + " " + choice, add_special_tokens=False)["input_ids"]
            expected = log_softmax(model, whole)
            lls.append(sum(float(expected[i - 1, whole[i]]) for i in range(len(ctx), len(whole))))
        for mine, theirs in zip(lls, served_ll[question["question"]]):
            assert abs(mine - theirs) < 1e-3
        correct += max(range(len(lls)), key=lls.__getitem__) == question["answer"]
    assert acc == pytest.approx(correct / len(QUESTIONS))
