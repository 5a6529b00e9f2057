"""Endpoint contestants (``app.endpoints``): models served by an OpenAI-compatible engine, compared in the arena
beside a run's stages. A small local HTTP server plays the engine (answers, slowness, errors, malformed streams,
what it was sent); the happy path runs against the project's own ``python -m chimed serve``."""

from __future__ import annotations

import json
import logging
import random
import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import openai
import pytest

from app.arena import Arena, ArenaSession, resolve_decoding
from app.contestants import available_contestants, endpoint_contestants, resolve_contestants
from app.serving.endpoints import EndpointClients
from app.serving.pool import PanelRequest
from app.tabs.leaderboard import run_choices
from core.config import load_config
from core.errors import UserError
from preference_store.exports.pairs import export_pairs
from preference_store.repository import PreferenceStore
from tests.serving_helpers import chimed_serve

PROMPT = "高血压患者饮食上要注意什么？"
ANSWER = ["少吃盐，", "多吃蔬菜水果，", "规律监测血压。"]  # what the fake engine streams, piece by piece
KEY = "sk-test-0123456789abcdef-SECRET"


# --- a fake OpenAI-compatible engine ------------------------------------------------------------


class FakeEngine:
    """A local /v1/chat/completions whose behaviour is chosen by the requested model name:
    ``ok`` streams :data:`ANSWER` (``paced``: 0.3 s apart), ``slow`` streams a piece every 0.3 s for 18 s, ``fail500`` answers HTTP 500,
    ``echo401`` a 401 quoting the Authorization header it got, ``malformed`` a broken event, ``empty`` no text,
    ``leaky`` an answer naming its own model. Every request is kept (path, headers in lower case, body) in ``requests``."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.in_flight: dict[str, int] = {}  # model -> requests being answered at once, now
        self.most_in_flight: dict[str, int] = {}  # and at most
        self._lock = threading.Lock()
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # quiet
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                engine.requests.append(
                    {"path": self.path, "body": body, "headers": {k.lower(): v for k, v in self.headers.items()}}
                )
                model = body["model"]
                with engine._lock:
                    engine.in_flight[model] = engine.in_flight.get(model, 0) + 1
                    engine.most_in_flight[model] = max(engine.most_in_flight.get(model, 0), engine.in_flight[model])
                try:
                    engine.respond(self, body)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout): fine
                    pass
                finally:
                    with engine._lock:
                        engine.in_flight[model] -= 1

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    @staticmethod
    def _json(handler, status: int, payload: dict) -> None:
        data = json.dumps(payload).encode()
        handler.send_response(status)
        handler.send_header("Content-Type", "application/json")
        handler.send_header("Content-Length", str(len(data)))
        handler.end_headers()
        handler.wfile.write(data)

    @staticmethod
    def _event(handler, model: str, delta: dict, finish=None) -> None:
        chunk = {
            "id": "c1",
            "object": "chat.completion.chunk",
            "created": 0,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }
        handler.wfile.write(f"data: {json.dumps(chunk, ensure_ascii=False)}\n\n".encode())
        handler.wfile.flush()

    def respond(self, handler, body: dict) -> None:
        model = body["model"]
        if model == "fail500":
            return self._json(
                handler, 500, {"error": {"message": "model overloaded\nretry later", "type": "server_error"}}
            )
        if model == "echo401":
            got = handler.headers.get("Authorization", "")
            return self._json(handler, 401, {"error": {"message": f"invalid credentials: {got}"}})
        handler.send_response(200)
        handler.send_header("Content-Type", "text/event-stream")
        handler.end_headers()
        self._event(handler, model, {"role": "assistant"})
        if model == "malformed":
            handler.wfile.write(b'data: {"choices": [{"delta": {"content": "half\n\n')
        elif model == "slow":
            for _ in range(60):
                self._event(handler, model, {"content": "慢"})
                time.sleep(0.3)
        elif model != "empty":
            pieces = [f"我是{model}。"] if model.startswith("leaky") else ANSWER
            for piece in pieces:
                self._event(handler, model, {"content": piece})
                time.sleep(0.3 if model == "paced" else 0)
        self._event(handler, model, {}, finish="stop")
        handler.wfile.write(b"data: [DONE]\n\n")
        handler.wfile.flush()


@pytest.fixture
def engine():
    fake = FakeEngine()
    yield fake
    fake.close()


def closed_port() -> int:
    """A localhost port nothing listens on (a refused connection)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def endpoint(name: str, url: str, model: str | None = None, **extra) -> str:
    fields = {"name": name, "base_url": url, "model": name if model is None else model, **extra}
    return "{" + ", ".join(f"{k}: {json.dumps(v)}" for k, v in fields.items()) + "}"


def config_with(*endpoints: str):
    """The tiny profile with these ``app.endpoints`` entries, given as a command-line override."""
    return load_config("tiny", [f"app.endpoints=[{', '.join(endpoints)}]"])


def arena_session(store: PreferenceStore) -> ArenaSession:
    demo = store.demo_annotator()
    store.mark_guideline_seen(demo.id, store.guideline().version)
    return ArenaSession(annotator=demo, notice_accepted=True)


def ask(arena: Arena, session: ArenaSession, seed: int = 7, max_new_tokens: int = 12):
    decoding = resolve_decoding(arena.cfg.app.decoding, seed=seed, max_new_tokens=max_new_tokens)
    list(arena.ask(session, PROMPT, decoding))
    return decoding


def answers_by_checkpoint(generation_answers) -> dict:
    return {a.checkpoint_id: a for a in generation_answers}


# --- config -------------------------------------------------------------------------------------


def test_endpoints_come_from_the_config_and_are_listed_beside_the_runs_stages(app_home):
    run_id = app_home[1]
    cfg = config_with(
        endpoint(
            "hospital",
            "http://10.0.0.5:8000/v1",
            "qwen2-7b",
            api_key_env="HOSPITAL_KEY",
            system_prompt="你是医生。",
            max_concurrency=2,
            timeout_s=30,
        )
    )
    (e,) = cfg.app.endpoints
    assert (e.name, e.model, e.api_key_env, e.system_prompt, e.max_concurrency, e.timeout_s) == (
        "hospital",
        "qwen2-7b",
        "HOSPITAL_KEY",
        "你是医生。",
        2,
        30.0,
    )
    ids = [c.checkpoint_id for c in available_contestants(cfg)]
    assert ids == [f"{run_id}/{s}" for s in ("base", "cpt", "sft", "dpo")] + ["endpoint:hospital"]
    (contestant,) = resolve_contestants(cfg, ["endpoint:hospital"])
    assert contestant.label == "hospital · endpoint (qwen2-7b)" and contestant.endpoint == e
    assert endpoint_contestants(cfg) == [contestant]
    with pytest.raises(UserError, match="unknown checkpoint 'endpoint:other'"):
        resolve_contestants(cfg, ["endpoint:other"])


@pytest.mark.parametrize(
    "entry, message",
    [
        (endpoint("a b", "http://h/v1"), r"name='a b' must be 1-64 letters"),
        (endpoint("run/sft", "http://h/v1"), r"name='run/sft' must be"),
        (endpoint("a", "ftp://h/v1"), r"base_url='ftp://h/v1' must be an http\(s\) URL"),
        (endpoint("a", "http://h:port/v1?token=" + KEY), r"base_url is not a URL"),
        (endpoint("a", "https://user:" + KEY + "@h/v1"), r"base_url='https://h/v1' holds a user, password or query"),
        (endpoint("a", "https://h/v1?key=" + KEY), r"base_url='https://h/v1' holds a user, password or query"),
        (endpoint("a", "http://h/v1", model=""), r"model is missing"),
        (endpoint("a", "http://h/v1", api_key_env=KEY), r"api_key_env must be the NAME of an environment variable"),
        (endpoint("a", "http://h/v1", max_concurrency=0), r"max_concurrency must be at least 1"),
        (endpoint("a", "http://h/v1", stop=["a", "b", "c", "d", "e"]), r"stop must be at most 4 non-empty strings"),
        (endpoint("a", "http://h/v1", stop=[""]), r"stop must be at most 4 non-empty strings"),
        ("{name: a, base_url: 'http://h/v1', model: m, url: x}", r"unknown key app.endpoints\[0\].url"),
    ],
)
def test_a_bad_endpoint_entry_is_refused_in_one_line_without_repeating_a_secret(entry, message):
    with pytest.raises(UserError, match=message) as err:
        config_with(entry)
    assert "\n" not in str(err.value) and KEY not in str(err.value)


def test_two_endpoints_with_one_name_are_refused():
    with pytest.raises(UserError, match=r"app.endpoints\[1\].name='a' is used twice"):
        config_with(endpoint("a", "http://h/v1"), endpoint("a", "http://other/v1"))


def test_endpoints_can_be_listed_in_a_profile_file(tmp_path, monkeypatch):
    from core.config import loading as config_module

    text = (config_module.CONFIG_DIR / "tiny.yaml").read_text(encoding="utf-8")
    assert "\napp:\n" in text  # the tiny profile has an app section: the list goes under it
    text = text.replace(
        "\napp:\n",
        "\napp:\n  endpoints:\n    - name: vllm-sft\n"
        "      base_url: http://127.0.0.1:8000/v1\n      model: final/sft\n"
        "      api_key_env: VLLM_KEY\n",
        1,
    )
    (tmp_path / "tiny.yaml").write_text(text, encoding="utf-8")
    monkeypatch.setattr(config_module, "CONFIG_DIR", tmp_path)
    (e,) = load_config("tiny").app.endpoints
    assert (e.name, e.base_url, e.model, e.api_key_env, e.max_concurrency) == (
        "vllm-sft",
        "http://127.0.0.1:8000/v1",
        "final/sft",
        "VLLM_KEY",
        4,
    )


# --- failures stay in their own panel -------------------------------------------------------------


def test_a_refused_and_a_slow_endpoint_fail_only_their_own_panels(app_home, engine, make_pool):
    run_id = app_home[1]
    cfg = config_with(
        endpoint("refused", f"http://127.0.0.1:{closed_port()}/v1"),
        endpoint("slow", engine.url, timeout_s=1.5),
        endpoint("ok", engine.url),
    )
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        assert arena.pool.preload(resolve_contestants(cfg, [f"{run_id}/sft", "endpoint:ok"])) == [None, None]
        session = arena_session(store)
        arena.start(
            session,
            [f"{run_id}/sft", "endpoint:refused", "endpoint:slow", "endpoint:ok"],
            blind=True,
            rng=random.Random(3),
        )
        answering = arena.ask(session, PROMPT, resolve_decoding(cfg.app.decoding, seed=7, max_new_tokens=12))
        next(answering)  # the prompt is screened and sent: every panel is answering
        started = time.monotonic()
        for _ in answering:
            pass
        took = time.monotonic() - started
        by_id = {p.checkpoint_id: label for label, p in zip(session.labels, session.panels)}
        assert set(session.errors) == {by_id["endpoint:refused"], by_id["endpoint:slow"]}
        assert session.errors[by_id["endpoint:refused"]].startswith("cannot reach the endpoint (")
        assert (
            session.errors[by_id["endpoint:slow"]]
            == "no complete answer within 1.5 s (timeout_s): the endpoint is too slow or overloaded"
        )
        assert took < 9  # the slow endpoint was given up at its timeout, not waited for (it streams for 18 s)
        for label in session.errors:  # the failed panels say why, in one line
            shown = session.panels[session.labels.index(label)].display[-1]["content"]
            assert shown.startswith("⚠ 生成失败 / generation failed: ") and "\n" not in shown
        stored = store.get_comparison(session.comparison_id)  # the two that answered are judged
        assert sorted(r.checkpoint_id for r in stored.responses) == sorted([f"{run_id}/sft", "endpoint:ok"])
        pool_answer = next(r for r in stored.responses if r.checkpoint_id == f"{run_id}/sft")
        assert pool_answer.text.strip() and pool_answer.serving["mode"] == "exact"


@pytest.mark.parametrize(
    "model, reason",
    [
        ("fail500", "the endpoint answered HTTP 500: model overloaded"),
        ("malformed", "malformed stream from the endpoint (JSONDecodeError: "),
        ("empty", "the endpoint sent an empty answer (finish reason: stop)"),
    ],
)
def test_http_errors_malformed_streams_and_empty_answers_fail_their_panel_with_a_one_line_reason(
    chimed_home, engine, make_pool, model, reason
):
    cfg = config_with(endpoint("broken", engine.url, model), endpoint("ok", engine.url))
    pool = make_pool(cfg)
    contestants = resolve_contestants(cfg, ["endpoint:broken", "endpoint:ok"])
    generation = pool.generate(
        [PanelRequest(c, [{"role": "user", "content": PROMPT}]) for c in contestants],
        resolve_decoding(cfg.app.decoding, seed=1),
        EndpointClients(),
    )
    broken, ok = generation.wait(timeout=30)
    assert broken.done and broken.error.startswith(reason) and "\n" not in broken.error
    assert ok.error is None and ok.text == "".join(ANSWER)


@pytest.mark.parametrize("max_concurrency", [1, 2])
def test_an_endpoint_takes_at_most_max_concurrency_requests_at_once(chimed_home, engine, make_pool, max_concurrency):
    cfg = config_with(endpoint("paced", engine.url, max_concurrency=max_concurrency), endpoint("ok", engine.url))
    pool, clients = make_pool(cfg), EndpointClients()  # one app's clients, shared by its sessions
    contestants = resolve_contestants(cfg, ["endpoint:paced", "endpoint:ok"])
    generations = [
        pool.generate(
            [PanelRequest(c, [{"role": "user", "content": PROMPT}]) for c in contestants],
            resolve_decoding(cfg.app.decoding, seed=seed),
            clients,
        )
        for seed in range(3)
    ]
    for generation in generations:
        assert [(a.error, a.text) for a in generation.wait(timeout=30)] == [(None, "".join(ANSWER))] * 2
    assert engine.most_in_flight["paced"] == max_concurrency  # the other requests waited for a slot


def test_the_api_key_is_sent_from_the_environment_and_never_stored_shown_or_logged(
    app_home, engine, make_pool, monkeypatch, caplog, tmp_path
):
    run_id = app_home[1]
    monkeypatch.setenv("REF_API_KEY", KEY)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-never-sent-anywhere")
    cfg = config_with(
        endpoint("ref", engine.url, "ok", api_key_env="REF_API_KEY"),
        endpoint("open", engine.url, "ok"),
        endpoint("echo", engine.url, "echo401", api_key_env="REF_API_KEY"),
        endpoint("nokey", engine.url, "ok", api_key_env="MISSING_KEY_VAR"),
    )
    caplog.set_level(logging.DEBUG)
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        session = arena_session(store)
        arena.start(session, [f"{run_id}/sft", "endpoint:ref", "endpoint:echo", "endpoint:nokey"], blind=False)
        ask(arena, session)
        headers = {r["headers"].get("authorization") for r in engine.requests}
        assert headers == {f"Bearer {KEY}"}  # ref and echo sent the key; nokey sent nothing at all
        assert session.errors == {
            "C": "the endpoint answered HTTP 401: invalid credentials: Bearer ***",
            "D": "the API key is missing: set the environment variable MISSING_KEY_VAR before starting the app",
        }
        arena.vote(session, "B")
        # a server without a key gets no Authorization header (OPENAI_API_KEY is never sent to it)
        arena.start(session, ["endpoint:open", f"{run_id}/sft"], blind=False)
        ask(arena, session)
        assert "authorization" not in engine.requests[-1]["headers"]
        arena.vote(session, "A")

        cfg.store.admit_unblinded = True  # the panels were named (blind=False) to check each one's error
        assert export_pairs(cfg, tmp_path / "pairs.jsonl", store=store).path is not None
    for record in map(json.loads, (tmp_path / "pairs.jsonl").read_text(encoding="utf-8").splitlines()):
        endpoint_side = "chosen" if record["provenance"]["chosen_checkpoint"].startswith("endpoint:") else "rejected"
        assert record["provenance"][f"{endpoint_side}_serving"]["base_url"] == engine.url
    database = Path(cfg.database_url.removeprefix("sqlite:///"))
    everything = [
        *(f.read_bytes().decode("utf-8", "replace") for f in database.parent.glob(database.name + "*")),
        (tmp_path / "pairs.jsonl").read_text(encoding="utf-8"),
        caplog.text,
        json.dumps(cfg.to_dict()),
    ]
    for text in everything:
        assert KEY not in text and "sk-never-sent-anywhere" not in text
    assert "endpoint echo" in caplog.text  # the failure is logged, by name, for whoever runs the app


# --- the arena with endpoint contestants ----------------------------------------------------------


def test_an_endpoint_contestant_is_blind_judged_and_stored_with_its_provenance(app_home, engine, make_pool):
    run_id = app_home[1]
    cfg = config_with(
        endpoint("reference", engine.url, "ok", system_prompt="你是一名医生。", stop=["\n问："]),
        endpoint("leaky", engine.url, "leaky-med-7b"),
    )
    chosen = [f"{run_id}/sft", "endpoint:reference", "endpoint:leaky"]
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        session = arena_session(store)
        orders = set()
        for seed in range(6):
            arena.start(session, chosen, blind=True, rng=random.Random(seed))
            orders.add(tuple(p.checkpoint_id for p in session.panels))
        assert len(orders) > 1  # shuffled like any contestant
        assert [session.header(label) for label in session.labels] == ["模型 A", "模型 B", "模型 C"]
        decoding = ask(arena, session, seed=1234, max_new_tokens=20)
        labels = {p.checkpoint_id: label for label, p in zip(session.labels, session.panels)}
        assert session.errors == {}
        # the endpoint got the conversation with its system prompt first, and the arena's decoding
        body = next(r["body"] for r in engine.requests if r["body"]["model"] == "ok")
        assert body["messages"] == [
            {"role": "system", "content": "你是一名医生。"},
            {"role": "user", "content": PROMPT},
        ]
        assert (body["seed"], body["max_tokens"], body["temperature"], body["top_p"], body["stream"]) == (
            1234,
            20,
            decoding.temperature,
            decoding.top_p,
            True,
        )
        assert body["stop"] == ["\n问："]  # its stop strings; an endpoint without any sends none
        assert "stop" not in next(r["body"] for r in engine.requests if r["body"]["model"] == "leaky-med-7b")
        arena.rank(session, {labels["endpoint:reference"]: 1, labels[f"{run_id}/sft"]: 2, labels["endpoint:leaky"]: 3})
        assert session.header(labels["endpoint:reference"]).endswith("endpoint:reference")  # revealed after

        stored = {r.checkpoint_id: r for r in store.get_comparison(session.comparison_id).responses}
        reference = stored["endpoint:reference"]
        assert reference.text == "".join(ANSWER)  # exactly what the endpoint sent
        assert reference.serving == {
            "mode": "endpoint",
            "endpoint": "reference",
            "model": "ok",
            "base_url": engine.url,
            "system_prompt": "你是一名医生。",
            "stop": ["\n问："],
            "served_model": "ok",
        }
        assert reference.seed == 1234 and reference.decoding["max_new_tokens"] == 20
        assert reference.n_tokens == len(ANSWER) and reference.latency_s > 0
        assert stored["endpoint:leaky"].leaks == ["leaky", "leaky-med-7b"]  # naming itself gives it away
        assert reference.leaks == []

        records = {c.id: c for c in store.list_checkpoints(endpoints=True)}
        assert (records["endpoint:reference"].run_id, records["endpoint:reference"].stage) == (
            "endpoint:reference",
            "endpoint",
        )
        assert all(not c.id.startswith("endpoint:") for c in store.list_checkpoints())  # runs only
        assert run_choices(store) == [run_id]  # the leaderboard's run-vs-run choice lists no endpoint as a run
        board = store.leaderboard()
        assert {r.checkpoint_id for r in board.ratings} >= {"endpoint:reference", f"{run_id}/sft"}


# --- the happy path against the project's own OpenAI-compatible server --------------------------------


@pytest.fixture
def serve_run(app_home, tmp_path):
    """``python -m chimed serve`` of the tiny run on a free port: (base URL, run id); stopped at the end."""
    home, run_id = app_home
    with chimed_serve(home, run_id, tmp_path / "serve.log", timeout_s=240) as url:
        yield url, run_id


def test_the_arena_compares_a_runs_stage_with_the_same_stage_served_by_chimed_serve(serve_run, make_pool):
    url, run_id = serve_run
    cfg = config_with(endpoint("served-sft", url, f"{run_id}/sft"))
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        session = arena_session(store)
        arena.start(session, [f"{run_id}/sft", "endpoint:served-sft"], blind=True, rng=random.Random(0))
        decoding = ask(arena, session, seed=424242, max_new_tokens=24)
        assert session.errors == {}
        arena.vote(session, "tie")
        stored = {r.checkpoint_id: r for r in store.get_comparison(session.comparison_id).responses}
    served = stored["endpoint:served-sft"]
    assert served.serving == {
        "mode": "endpoint",
        "endpoint": "served-sft",
        "model": f"{run_id}/sft",
        "base_url": url,
        "served_model": f"{run_id}/sft",
    }
    # the answer is what the server sends for that request, asked directly with the official client
    direct = openai.OpenAI(base_url=url, api_key="unused").chat.completions.create(
        model=f"{run_id}/sft",
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=decoding.seed,
    )
    assert served.text == direct.choices[0].message.content and served.text.strip()
    # its length as the engine counted it (the stream's usage chunk), not the pieces it came in
    assert served.n_tokens == direct.usage.completion_tokens == stored[f"{run_id}/sft"].n_tokens
    # and the server answers with the arena's model pool: the same stage, seed and decoding answer alike
    assert served.text == stored[f"{run_id}/sft"].text
