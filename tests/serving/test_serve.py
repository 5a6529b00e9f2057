"""``./launch.sh serve``: a run's stages over the OpenAI API, checked with the official ``openai`` client
against a real ``python -m chimed serve --profile tiny`` process on the tiny run (one server for the module,
a second one for the login rules), its answers against the model pool's in this process."""

from __future__ import annotations

import hashlib
import re
import shutil
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from urllib.parse import unquote

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from openai import OpenAI
from sqlalchemy import select

from app.arena import resolve_decoding
from app.contestants import resolve_contestants
from app.notice import NOTICE_EN, NOTICE_ZH
from app.openai_server import build_server
from app.serving.pool import ModelPool, PanelRequest
from chimed import main as chimed_main
from core.config import load_config
from preference_store.models import ApiTokenRow
from preference_store.repository import PreferenceStore
from preference_store.validation import PreferenceStoreError
from tests.serving_helpers import chimed_serve

QUESTION = "高血压患者饮食上要注意什么？"
ERROR_KEYS = {"message", "type", "param", "code"}


def copy_home(tiny_run, into: Path) -> tuple[Path, str]:
    source, run_id = tiny_run
    shutil.copytree(source, into, symlinks=True)
    return into, run_id


@pytest.fixture(scope="module")
def served(tiny_run, tmp_path_factory):
    """(base URL, home, run id, server log) of one server on a private copy of the tiny run, without accounts."""
    home, run_id = copy_home(tiny_run, tmp_path_factory.mktemp("serve") / "home")
    log = home.parent / "serve.log"
    with chimed_serve(home, run_id, log) as url:
        yield url, home, run_id, log


@pytest.fixture(scope="module")
def client(served) -> OpenAI:
    return OpenAI(base_url=served[0], api_key="no accounts: any key", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def pool_answer(served):
    """``pool_answer(checkpoint_id, messages, decoding)``: the answer of the app's model pool, in this process,
    on the same run."""
    _, home, _, _ = served
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("CHIMED_HOME", str(home))
        patch.delenv("CHIMED_DATABASE_URL", raising=False)
        cfg = load_config("tiny")
        pool = ModelPool(cfg)

        def answer(checkpoint_id: str, messages: list[dict], decoding):
            contestant = resolve_contestants(cfg, [checkpoint_id])[0]
            return pool.generate([PanelRequest(contestant, messages)], decoding).wait(timeout=120)[0]

        try:
            yield answer
        finally:
            pool.close()


def streamed(client: OpenAI, **request) -> tuple[str, list, object]:
    """The text of a streamed completion, its finish reasons and its usage chunk."""
    text, finishes, usage = "", [], None
    for chunk in client.chat.completions.create(stream=True, stream_options={"include_usage": True}, **request):
        for choice in chunk.choices:
            text += choice.delta.content or ""
            if choice.finish_reason:
                finishes.append(choice.finish_reason)
        usage = chunk.usage or usage
    return text, finishes, usage


def test_models_are_the_runs_stages_and_every_response_carries_the_notice(served, client):
    url, home, run_id, _ = served
    stages = ["base", "cpt", "sft", "dpo"]
    assert [m.id for m in client.models.list()] == [f"{run_id}/{s}" for s in stages]
    assert client.models.retrieve(f"{run_id}/sft").id == f"{run_id}/sft"
    raw = client.models.with_raw_response.list()
    assert raw.headers["x-chimed-notice"] == NOTICE_EN
    assert unquote(raw.headers["x-chimed-notice-zh"]) == NOTICE_ZH
    missing = httpx.get(f"{url}/no-such-thing")  # errors too
    assert missing.status_code == 404 and set(missing.json()["error"]) == ERROR_KEYS
    assert missing.headers["x-chimed-notice"] == NOTICE_EN
    request = {"model": f"{run_id}/sft", "messages": [{"role": "user", "content": QUESTION}], "stream": True}
    with httpx.stream("POST", f"{url}/chat/completions", json=request, timeout=120) as events:  # and streams
        assert events.headers["x-chimed-notice"] == NOTICE_EN
        assert events.headers["content-type"].startswith("text/event-stream")
        body = events.read().decode()
    assert body.startswith("data: {") and body.endswith("data: [DONE]\n\n")


@pytest.mark.parametrize(
    "stage, messages",
    [
        ("cpt", [{"role": "user", "content": QUESTION}]),  # a plain stage: 问：/答： text, cut before the next turn
        (
            "dpo",
            [
                {"role": "system", "content": "你是一名全科医生。"},
                {"role": "user", "content": "头痛怎么办？"},
                {"role": "assistant", "content": "请先测量血压。"},
                {"role": "user", "content": QUESTION},
            ],
        ),
    ],
)
def test_streamed_and_plain_completions_equal_the_pools_answer(served, client, pool_answer, stage, messages):
    _, _, run_id, _ = served
    model, decoding = f"{run_id}/{stage}", load_config("tiny").app.decoding
    for seed in (11, 12):
        expected = pool_answer(model, messages, resolve_decoding(decoding, seed=seed))
        assert expected.error is None and expected.text, expected
        # only the seed given: the arena's decoding for the rest
        plain = client.chat.completions.create(model=model, messages=messages, seed=seed)
        assert plain.choices[0].message.content == expected.text
        assert plain.model == model and plain.choices[0].finish_reason in ("stop", "length")
        assert (plain.usage.prompt_tokens, plain.usage.completion_tokens) == (expected.prompt_tokens, expected.n_tokens)
        assert plain.usage.prompt_tokens > 0
        text, finishes, usage = streamed(
            client,
            model=model,
            messages=messages,
            seed=seed,
            temperature=decoding.temperature,
            top_p=decoding.top_p,
            max_tokens=decoding.max_new_tokens,
        )
        assert text == expected.text
        assert finishes == [plain.choices[0].finish_reason]
        assert (usage.prompt_tokens, usage.completion_tokens) == (expected.prompt_tokens, expected.n_tokens)


def test_max_tokens_and_stop_sequences_end_the_answer_where_asked(served, client, pool_answer):
    _, _, run_id, _ = served
    model, messages = f"{run_id}/sft", [{"role": "user", "content": QUESTION}]
    full = pool_answer(model, messages, resolve_decoding(load_config("tiny").app.decoding, seed=5, temperature=0))
    assert len(full.text) > 6, full
    stop = full.text[4:6]
    kept = full.text[: full.text.find(stop)]
    plain = client.chat.completions.create(model=model, messages=messages, seed=5, temperature=0, stop=[stop])
    assert (plain.choices[0].message.content, plain.choices[0].finish_reason) == (kept, "stop")
    assert streamed(client, model=model, messages=messages, seed=5, temperature=0, stop=stop)[:2] == (kept, ["stop"])

    short = client.chat.completions.create(model=model, messages=messages, temperature=0, max_tokens=3)
    assert short.usage.completion_tokens == 3 and short.choices[0].finish_reason == "length"
    assert full.text.startswith(short.choices[0].message.content)


def test_several_requests_at_once_each_get_their_own_answer(served, client, pool_answer):
    _, _, run_id, _ = served
    messages = [{"role": "user", "content": QUESTION}]
    asks = [(f"{run_id}/{stage}", seed) for stage in ("base", "cpt", "sft", "dpo") for seed in (21, 22)]
    decoding = load_config("tiny").app.decoding

    def ask(model_seed: tuple[str, int]) -> str:  # odd seeds streamed, even ones not
        model, seed = model_seed
        if seed % 2:
            return streamed(client, model=model, messages=messages, seed=seed)[0]
        return client.chat.completions.create(model=model, messages=messages, seed=seed).choices[0].message.content

    with ThreadPoolExecutor(len(asks)) as threads:
        answers = list(threads.map(ask, asks))
    assert answers == [pool_answer(model, messages, resolve_decoding(decoding, seed=seed)).text for model, seed in asks]


def test_bad_requests_get_openai_errors(served, client):
    url, _, run_id, _ = served
    model, ok = f"{run_id}/sft", [{"role": "user", "content": QUESTION}]
    limit = load_config("tiny").app.max_prompt_chars

    with pytest.raises(openai.NotFoundError) as err:
        client.chat.completions.create(model=f"{run_id}/nope", messages=ok)
    assert f"{run_id}/nope" in err.value.message and err.value.code == "model_not_found"
    refused = {
        "messages": dict(messages=[]),
        "messages[0].content": dict(messages=[{"role": "user", "content": "头" * (limit + 1)}]),
        "messages[1].role": dict(messages=ok + [{"role": "assistant", "content": "好的"}]),
        "n": dict(messages=ok, n=load_config("tiny").app.max_n + 1),
        "tools": dict(messages=ok, tools=[{"type": "function", "function": {"name": "f", "parameters": {}}}]),
        "temperature": dict(messages=ok, temperature=9),
    }
    for param, request in refused.items():
        with pytest.raises(openai.BadRequestError) as err:
            client.chat.completions.create(model=model, **request)
        assert err.value.param == param, err.value.message
    long = {"role": "user", "content": "头" * (limit + 1)}
    with pytest.raises(openai.BadRequestError, match=f"over the limit of {limit}"):
        client.chat.completions.create(model=model, messages=[long], stream=True)

    # identifiers are refused, as in the arena, unless the redacted text is asked for
    typed = [{"role": "user", "content": "我叫李明，电话13812345678，头痛三天怎么办"}]
    with pytest.raises(openai.BadRequestError, match="identifiers") as err:
        client.chat.completions.create(model=model, messages=typed)
    assert err.value.code == "identifiers_found"
    assert (
        client.chat.completions.create(
            model=model, messages=typed, max_tokens=2, temperature=0, extra_body={"redact": True}
        ).usage.completion_tokens
        > 0
    )

    raw = httpx.post(f"{url}/chat/completions", json={"model": model, "messages": []})
    assert raw.status_code == 400 and set(raw.json()["error"]) == ERROR_KEYS
    assert raw.headers["x-chimed-notice"] == NOTICE_EN


def test_with_accounts_each_request_needs_an_annotators_token(tiny_run, tmp_path, use_home, capsys):
    home, run_id = copy_home(tiny_run, tmp_path / "home")
    use_home(home)
    url = f"sqlite:///{home / 'preferences.db'}"
    with PreferenceStore(url) as store:
        store.add_annotator("dr_li", "secret")
        comparisons = store.counts().comparisons

    assert chimed_main(["serve-token", "nobody", "--profile", "tiny"]) == 2  # ./launch.sh serve-token NAME
    assert "no annotator account 'nobody'" in capsys.readouterr().err
    assert chimed_main(["serve-token", "dr_li", "--profile", "tiny"]) == 0
    token = capsys.readouterr().out.split()[-1]
    stored = sqlite3.connect(home / "preferences.db").execute("SELECT token_sha256 FROM api_tokens").fetchall()
    assert stored == [(hashlib.sha256(token.encode()).hexdigest(),)]  # only its hash is kept

    log = tmp_path / "serve.log"
    with chimed_serve(home, run_id, log, "app.preload_newest_run=false") as base_url:  # (loads what it is asked for)
        bare = httpx.get(f"{base_url}/models")
        assert bare.status_code == 401 and bare.json()["error"]["code"] == "missing_api_key"
        assert bare.headers["x-chimed-notice"] == NOTICE_EN
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=base_url, api_key="chimed-wrong", max_retries=0).models.list()
        with pytest.raises(openai.AuthenticationError):
            OpenAI(base_url=base_url, api_key="chimed-wrong", max_retries=0).chat.completions.create(
                model=f"{run_id}/sft", messages=[{"role": "user", "content": QUESTION}]
            )
        client = OpenAI(base_url=base_url, api_key=token, max_retries=0, timeout=120)
        assert f"{run_id}/dpo" in [m.id for m in client.models.list()]
        answer = client.chat.completions.create(
            model=f"{run_id}/dpo", max_tokens=4, messages=[{"role": "user", "content": QUESTION}]
        )
        assert answer.usage.completion_tokens > 0
        # a leaked token is revoked while the server runs: refused from the next request on
        assert chimed_main(["serve-token", "dr_li", "--revoke", "--profile", "tiny"]) == 0
        assert "revoked 1 API token(s) of dr_li" in capsys.readouterr().out
        with pytest.raises(openai.AuthenticationError):
            client.models.list()
    assert re.search(rf"serve: dr_li · {re.escape(run_id)}/dpo · ", log.read_text())  # attributed, and
    with PreferenceStore(url) as store:
        assert store.counts().comparisons == comparisons  # not recorded as a comparison


@pytest.mark.both_backends
def test_a_token_is_an_accounts_and_only_its_hash_is_stored(pref_store):
    pref_store.add_annotator("dr_wang", "pw")
    with pytest.raises(PreferenceStoreError, match="no annotator account"):
        pref_store.create_api_token(pref_store.demo_annotator().name)  # the demo annotator cannot log in
    first, second = pref_store.create_api_token("dr_wang"), pref_store.create_api_token("dr_wang")
    assert first != second and first.startswith("chimed-") and len(first) > 40
    assert pref_store.annotator_for_token(first).name == pref_store.annotator_for_token(second).name == "dr_wang"
    assert pref_store.annotator_for_token(first[:-1]) is None and pref_store.annotator_for_token("") is None
    with pref_store._read() as session:
        digests = session.scalars(select(ApiTokenRow.token_sha256)).all()
    assert sorted(digests) == sorted(hashlib.sha256(t.encode()).hexdigest() for t in (first, second))

    # revoking: all of one account's tokens, and no one else's
    pref_store.add_annotator("dr_zhao", "pw")
    other = pref_store.create_api_token("dr_zhao")
    assert pref_store.revoke_api_tokens("dr_wang") == 2
    assert pref_store.annotator_for_token(first) is None and pref_store.annotator_for_token(second) is None
    assert pref_store.annotator_for_token(other).name == "dr_zhao"
    assert pref_store.revoke_api_tokens("dr_wang") == 0
    with pytest.raises(PreferenceStoreError, match="no annotator account 'nobody'"):
        pref_store.revoke_api_tokens("nobody")


def test_a_failing_model_is_a_server_error_and_the_other_stages_still_answer(app_home, make_pool):
    home, run_id = app_home
    adapter = next((home / "runs" / run_id / "dpo").glob("adapter_model.*"))
    adapter.unlink()  # (a hard link to the shared run's file: replace it, never write through it)
    adapter.write_bytes(b"not a safetensors file")
    cfg, messages = load_config("tiny"), [{"role": "user", "content": QUESTION}]
    with (
        PreferenceStore.from_config(cfg) as store,
        TestClient(build_server(cfg, run_id, store, make_pool(cfg))) as http,
    ):  # the server in this process
        for stream in (False, True):
            failed = http.post(
                "/v1/chat/completions", json={"model": f"{run_id}/dpo", "messages": messages, "stream": stream}
            )
            assert failed.status_code == 500 and failed.json()["error"]["code"] == "model_error"
            assert f"{run_id}/dpo failed" in failed.json()["error"]["message"]
            assert failed.headers["x-chimed-notice"] == NOTICE_EN
        fine = http.post(
            "/v1/chat/completions",
            json={"model": f"{run_id}/sft", "messages": messages, "max_tokens": 3, "temperature": 0},
        )
        assert fine.status_code == 200 and fine.json()["usage"]["completion_tokens"] == 3
