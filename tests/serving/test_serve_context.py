"""``serve`` answers only what it read: a conversation over the model's context is refused as vLLM refuses it
(400 ``context_length_exceeded``), every message counts, trimming is an option that says what it left out,
a long conversation is encoded at once and outside the model's lock, and ``completion_tokens`` with ``stop``
counts the tokens up to the stop string. Checked with the official ``openai`` client against a real
``python -m chimed serve --profile tiny`` process, and the arena's path through the pool in this process."""

from __future__ import annotations

import threading
import time

import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI

from app.arena import resolve_decoding
from app.contestants import resolve_contestants
from app.openai_server import build_server
from app.serving.pool import ContextLengthExceeded, Generation, PanelRequest, PanelStreamer, fit_prompt, prompt_ids
from app.serving.sampling import Decoding
from core.config import load_config
from preference_store.repository import PreferenceStore
from tests.serving.test_serve import QUESTION, streamed
from tests.serving_helpers import no_account_client, serve_copy_of
from training.modeling import stage_chain, stage_tokenizer
from training.recipes.base import train_bpe_tokenizer

SENTENCES = (
    "患者头痛三天，血压偏高，建议低盐饮食并规律服药。",
    "咳嗽伴有发热时应多喝水，注意休息，必要时就医。",
    "糖尿病患者需要控制饮食，适当运动，定期监测血糖。",
)
DOCUMENT = "".join(SENTENCES) * 20  # under app.max_prompt_chars (2000), over the tiny model's 256 tokens


def long_history(n_messages: int = 300, chars: int = 500) -> list[dict]:
    """A conversation of ``n_messages`` messages of ``chars`` characters each (user and assistant in turn),
    ending with a short user question."""

    def text(i: int) -> str:
        return "".join(SENTENCES[(i + k) % len(SENTENCES)] for k in range(chars // 20 + 1))[:chars]

    return [{"role": "user" if i % 2 == 0 else "assistant", "content": text(i)} for i in range(n_messages - 1)] + [
        {"role": "user", "content": "那运动呢？"}
    ]


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(base URL, home, run id) of one server on a private copy of the tiny run, without accounts."""
    with serve_copy_of(tiny_run, tmp_path_factory.mktemp("serve_context")) as served:
        yield served


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return no_account_client(served[0])


def context_of_tiny() -> int:
    return load_config("tiny").model.max_position_embeddings  # the tiny base's 256 positions


def test_a_prompt_that_does_not_fit_the_context_is_refused_with_vllms_numbers(served, client):
    _, _, run_id = served
    model, messages, context = f"{run_id}/sft", [{"role": "user", "content": QUESTION}], context_of_tiny()
    prompt = client.chat.completions.create(model=model, messages=messages, max_tokens=1).usage.prompt_tokens
    exact = client.chat.completions.create(model=model, messages=messages, max_tokens=context - prompt, seed=1)
    assert exact.usage.prompt_tokens == prompt  # prompt + max_tokens == context: answered, read whole
    for stream in (False, True):
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(
                model=model, messages=messages, max_tokens=context - prompt + 1, stream=stream
            )
        assert (err.value.code, err.value.param) == ("context_length_exceeded", "messages")
        assert err.value.body["message"] == (
            f"This model's maximum context length is {context} tokens. However, you requested "
            f"{context - prompt + 1} output tokens and your prompt contains {prompt} input tokens, for a total of "
            f"{context + 1} tokens. Please reduce the length of the input prompt or the number of requested "
            "output tokens."
        )
    # lm-eval's default max_gen_toks (256) leaves no room on the tiny model: refused, never cut to fit
    for stage in ("base", "cpt", "sft", "dpo"):
        with pytest.raises(openai.BadRequestError, match="maximum context length is 256 tokens") as err:
            client.chat.completions.create(model=f"{run_id}/{stage}", messages=messages, max_tokens=256)
        assert err.value.code == "context_length_exceeded"
    # a document under the character limit but longer than the context, with the default max_tokens
    document = [{"role": "user", "content": DOCUMENT}]
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=document)
    assert err.value.code == "context_length_exceeded"


def test_every_message_counts_whatever_its_role(served, client):
    _, _, run_id = served
    model, question = f"{run_id}/dpo", {"role": "user", "content": QUESTION}
    limit = load_config("tiny").app.max_prompt_chars
    refusals = []
    for role in ("user", "system", "assistant"):
        messages = [{"role": role, "content": "头" * 100_000}] + ([question] if role != "user" else [])
        if role == "assistant":
            messages = [question] + messages + [question]
        with pytest.raises(openai.BadRequestError, match=f"over the limit of {limit}") as err:
            client.chat.completions.create(model=model, messages=messages)
        refusals.append((err.value.status_code, err.value.code))
        index = 1 if role == "assistant" else 0
        assert err.value.param == f"messages[{index}].content"
    assert refusals == [(400, "prompt_too_long")] * 3  # a 100k system message is refused like a user message
    # under the character limit, a system message still counts toward the context
    system = {"role": "system", "content": DOCUMENT}
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model=model, messages=[system, question])
    assert err.value.code == "context_length_exceeded"
    bare = client.chat.completions.create(model=model, messages=[question], max_tokens=1).usage.prompt_tokens
    short = client.chat.completions.create(
        model=model, messages=[{"role": "system", "content": "你是一名全科医生。"}, question], max_tokens=1
    )
    assert short.usage.prompt_tokens > bare  # read, not dropped


def test_a_long_history_is_encoded_at_once_and_outside_the_models_lock(served, client):
    _, home, run_id = served
    history = long_history()
    run_dir = home / "runs" / run_id
    tokenizer = stage_tokenizer(run_dir, stage_chain(run_dir, "dpo"))
    ids = prompt_ids(tokenizer, history)
    assert len(ids) > 100 * context_of_tiny()

    def seconds(trim: bool) -> float:
        """CPU seconds of this thread (the tokenizer's work included), which other processes on a busy
        machine do not stretch as they stretch the wall clock."""
        started = time.thread_time()
        try:
            trimmed = fit_prompt(tokenizer, history, True, context_of_tiny(), 24, trim=trim)
            assert trim and len(trimmed.ids) <= context_of_tiny() - 24
        except ContextLengthExceeded as err:
            assert not trim and err.prompt_tokens == len(ids)
        return time.thread_time() - started

    for trim in (False, True):  # refused whole, or trimmed
        encoding_s = min(seconds(trim) for _ in range(2))
        assert encoding_s < 1.0, f"300 messages took {encoding_s:.2f} s to encode (trim {trim})"  # (generous bound)

    # a small request to another stage of the same model process (dpo and sft ride on cpt) is not held up
    question = [{"role": "user", "content": QUESTION}]
    small = {"model": f"{run_id}/sft", "messages": question, "max_tokens": 8, "seed": 3}
    client.chat.completions.create(**small)  # both stages loaded
    client.chat.completions.create(model=f"{run_id}/dpo", messages=question, max_tokens=1)
    started = time.perf_counter()
    alone = client.chat.completions.create(**small).choices[0].message.content
    alone_s = time.perf_counter() - started
    done = {}

    def ask_long() -> None:
        done["long"] = client.chat.completions.with_raw_response.create(
            model=f"{run_id}/dpo", messages=history, extra_body={"trim_history": True}
        )

    thread = threading.Thread(target=ask_long)
    thread.start()
    latencies = []  # of small requests, one after the other for as long as the long one is in the server
    while thread.is_alive() or not latencies:
        started = time.perf_counter()
        assert client.chat.completions.create(**small).choices[0].message.content == alone
        latencies.append(time.perf_counter() - started)
    thread.join()
    assert done["long"].http_response.status_code == 200
    # before, the history was re-rendered two messages a pass under the model's lock (20 s and more): a small
    # request asked meanwhile waited for all of it
    assert max(latencies) < alone_s + 3.0, (
        f"a small request took {max(latencies):.2f} s beside the long one ({alone_s:.2f} s alone)"
    )


def test_with_stop_completion_tokens_count_the_answer_and_the_stop_every_time(served, client):
    _, _, run_id = served
    model, messages = f"{run_id}/sft", [{"role": "user", "content": QUESTION}]
    request = dict(model=model, messages=messages, seed=7, temperature=0.7, max_tokens=24)
    full = client.chat.completions.create(**request).choices[0].message.content
    assert len(full) > 6, full
    stop = full[3:5]
    kept = full[: full.find(stop)]
    counts = set()
    for _ in range(3):
        plain = client.chat.completions.create(stop=[stop], **request)
        assert (plain.choices[0].message.content, plain.choices[0].finish_reason) == (kept, "stop")
        counts.add(plain.usage.completion_tokens)
    for _ in range(2):
        text, finishes, usage = streamed(client, stop=stop, **request)
        assert (text, finishes) == (kept, ["stop"])
        counts.add(usage.completion_tokens)
    assert len(counts) == 1, counts  # the same number five times
    (n,) = counts
    # exactly the tokens of the answer and the stop: n tokens, generated without the stop, hold the stop
    # where the answer ended; one fewer does not hold it yet
    with_n = client.chat.completions.create(**request | {"max_tokens": n}).choices[0].message.content
    assert with_n.startswith(kept + stop)
    if n > 1:
        fewer = client.chat.completions.create(**request | {"max_tokens": n - 1}).choices[0].message.content
        assert stop not in fewer


def test_a_stop_string_ends_the_answer_at_the_same_token_however_the_steps_arrive():
    tokenizer = train_bpe_tokenizer(["高血压患者饮食上要注意什么？多喝水，少吃盐。"] * 20, vocab_size=400)
    ids = tokenizer("多喝水，少吃盐。注意休息。", add_special_tokens=False)["input_ids"]
    through_stop = next(n for n in range(1, len(ids) + 1) if "少吃" in tokenizer.decode(ids[:n]))
    decoding = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=len(ids), seed=0)
    for gathered in (1, 2, 5, len(ids)):  # the model process sends steps one by one or several at once
        generation = Generation(["run/sft", "run/dpo"], decoding)
        streamer = PanelStreamer(
            generation, [0, 1], [tokenizer] * 2, {tokenizer.eos_token_id}, [True, True], [("少吃",), ()]
        )
        for k in range(0, len(ids), gathered):
            streamer.put([[token, token] for token in ids[k : k + gathered]])
        streamer.end()
        stopped, whole = generation.answers
        assert (stopped.text, stopped.n_tokens, stopped.finish_reason) == ("多喝水，", through_stop, "stop")
        assert (whole.text, whole.n_tokens, whole.finish_reason) == ("多喝水，少吃盐。注意休息。", len(ids), "length")


def test_trimming_is_asked_for_and_says_what_it_left_out(served, client):
    _, _, run_id = served
    system = {"role": "system", "content": "你是一名全科医生。"}
    history = [system] + long_history(40, 100)
    model = f"{run_id}/dpo"
    with pytest.raises(openai.BadRequestError) as err:  # off by default
        client.chat.completions.create(model=model, messages=history)
    assert err.value.code == "context_length_exceeded"

    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=history, max_tokens=8, extra_body={"trim_history": True}
    )
    reply = raw.parse()
    dropped = reply.model_extra["dropped_messages"]
    assert raw.headers["x-chimed-dropped-messages"] == str(len(dropped)) != "0"
    assert dropped == list(range(1, 1 + len(dropped)))  # the oldest turns, the system message kept
    kept = [system] + history[1 + len(dropped) :]
    assert kept[1]["role"] == "user"
    assert reply.usage.prompt_tokens + 8 <= context_of_tiny()
    # what was kept is what the model read, and one turn more would not have fitted
    again = client.chat.completions.create(model=model, messages=kept, max_tokens=8)
    assert again.usage.prompt_tokens == reply.usage.prompt_tokens
    with pytest.raises(openai.BadRequestError):
        client.chat.completions.create(model=model, messages=[system] + history[len(dropped) - 1 :], max_tokens=8)
    # a stream says it in its first chunk
    chunks = list(
        client.chat.completions.create(
            model=model, messages=history, max_tokens=8, stream=True, extra_body={"trim_history": True}
        )
    )
    assert chunks[0].model_extra["dropped_messages"] == dropped
    # trimming cannot drop the last user message
    alone = [system, {"role": "user", "content": DOCUMENT}]
    with pytest.raises(openai.BadRequestError, match="trim_history") as err:
        client.chat.completions.create(model=model, messages=alone, extra_body={"trim_history": True})
    assert err.value.code == "context_length_exceeded"
    # nothing to drop: said as such
    raw = client.chat.completions.with_raw_response.create(
        model=model, messages=history[-1:], max_tokens=2, extra_body={"trim_history": True}
    )
    assert raw.headers["x-chimed-dropped-messages"] == "0" and raw.parse().model_extra["dropped_messages"] == []


def test_the_arena_refuses_a_conversation_that_outgrows_the_context_unless_trimming_is_on(app_home, make_pool):
    home, run_id = app_home
    history = long_history(40, 100)
    cfg = load_config("tiny")
    sft = resolve_contestants(cfg, [f"{run_id}/sft"])[0]
    pool = make_pool(cfg)
    answer = pool.generate([PanelRequest(sft, history)], resolve_decoding(cfg.app.decoding, seed=5)).wait(timeout=120)[
        0
    ]
    assert answer.error is not None and answer.error.startswith("This model's maximum context length is 256")
    assert answer.text == "" and answer.prompt_tokens is None  # nothing was generated from a cut prompt

    trim_cfg = load_config("tiny", ["app.trim_history=true"])
    trimming = make_pool(trim_cfg)
    answer = trimming.generate([PanelRequest(sft, history)], resolve_decoding(trim_cfg.app.decoding, seed=5)).wait(
        timeout=120
    )[0]
    assert answer.error is None and answer.dropped_messages == tuple(range(len(answer.dropped_messages)))
    assert answer.dropped_messages and answer.prompt_tokens + 24 <= context_of_tiny()
    # serve's default follows the config; a request may still refuse trimming
    with (
        PreferenceStore.from_config(trim_cfg) as store,
        TestClient(build_server(trim_cfg, run_id, store, trimming)) as http,
    ):
        body = {"model": f"{run_id}/sft", "messages": history, "max_tokens": 4}
        reply = http.post("/v1/chat/completions", json=body)
        assert reply.status_code == 200 and reply.json()["dropped_messages"] == list(answer.dropped_messages)
        refused = http.post("/v1/chat/completions", json=body | {"trim_history": False})
        assert refused.status_code == 400 and refused.json()["error"]["code"] == "context_length_exceeded"
        assert "x-chimed-dropped-messages" not in refused.headers
        bad = http.post("/v1/chat/completions", json=body | {"trim_history": "yes"})
        assert bad.status_code == 400 and bad.json()["error"]["param"] == "trim_history"
