"""Batching across callers in the model pool (app/serving/batching.py) on the tiny run: concurrent requests
give exactly what they give alone, a request that comes while others generate joins their batch, each keeps
its own settings, and a request cancelled or failing leaves the others alone."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from app.contestants import resolve_contestants
from app.serving.model_process import ModelProcess
from app.serving.pool import PanelRequest
from app.serving.sampling import Decoding
from core.config import load_config
from core.errors import UserError
from tests.serving_helpers import no_account_client, serve_copy_of

QUESTIONS = [
    "高血压患者饮食上要注意什么？",
    "头痛怎么办？",
    "糖尿病有哪些症状？",
    "感冒要吃药吗？",
    "失眠该如何调理？",
    "孕妇可以喝咖啡吗？",
    "小孩发烧38度怎么办？",
    "胃痛吃什么药？",
]
GREEDY = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=24, seed=0)
SAMPLED = Decoding(temperature=1.0, top_p=0.9, max_new_tokens=24, seed=1234)
LONG = Decoding(temperature=1.0, top_p=1.0, max_new_tokens=200, seed=5)  # runs while the others come


@pytest.fixture
def cfg(app_home):
    return load_config("tiny")


@pytest.fixture
def stages(cfg, app_home):
    """The tiny run's sft and dpo: two LoRA stages on one full model (one model process)."""
    home, run_id = app_home
    return resolve_contestants(cfg, [f"{run_id}/sft", f"{run_id}/dpo"])


def _jobs(stages, decoding: Decoding) -> list[tuple[PanelRequest, Decoding]]:
    """16 one-panel requests: each question to sft and to dpo, each with its own seed."""
    return [
        (PanelRequest(stage, [{"role": "user", "content": q}]), decoding.for_choice(i))
        for i, (q, stage) in enumerate((q, s) for q in QUESTIONS for s in stages)
    ]


def _answer(pool, request: PanelRequest, decoding: Decoding):
    (answer,) = pool.generate([request], decoding).wait(timeout=300)
    assert answer.error is None and answer.done, answer
    return answer


def _concurrently(pool, jobs) -> list:
    answers: dict[int, object] = {}
    barrier = threading.Barrier(len(jobs))

    def ask(i: int, request: PanelRequest, decoding: Decoding) -> None:
        barrier.wait()
        answers[i] = _answer(pool, request, decoding)

    threads = [threading.Thread(target=ask, args=(i, *job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=600)
    return [answers[i] for i in range(len(jobs))]


def _joined(pool, first: list[PanelRequest], decoding: Decoding, then):
    """Start ``first`` (one comparison), and once its first tokens are out call ``then()``; returns both."""
    generation = pool.generate(first, decoding)
    deadline = time.monotonic() + 120
    while not all(a.n_tokens for a in generation.answers) and time.monotonic() < deadline:
        time.sleep(0.002)
    return generation, then()


@pytest.mark.parametrize("decoding", [GREEDY, SAMPLED], ids=["greedy", "seeded"])
def test_sixteen_concurrent_requests_answer_as_sixteen_sequential_ones(
    cfg, stages, make_pool, decoding, record_property
):
    pool = make_pool(cfg)
    assert pool.preload(stages) == [None, None]
    jobs = _jobs(stages, decoding)
    started = time.perf_counter()
    sequential = [_answer(pool, *job) for job in jobs]
    sequential_s = time.perf_counter() - started
    started = time.perf_counter()
    concurrent = _concurrently(pool, jobs)
    concurrent_s = time.perf_counter() - started
    record_property("sequential_s", round(sequential_s, 3))
    record_property("concurrent_s", round(concurrent_s, 3))
    print(f"16 requests ({decoding.temperature=}): sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s")
    assert [(a.text, a.n_tokens, a.finish_reason, a.token_ids) for a in concurrent] == [
        (a.text, a.n_tokens, a.finish_reason, a.token_ids) for a in sequential
    ]
    stats = next(iter(pool.batch_stats().values()))
    assert stats["largest"] > 1  # they were decoded together


def test_a_request_that_comes_while_others_generate_joins_their_batch(cfg, stages, make_pool):
    pool = make_pool(cfg)
    assert pool.preload(stages) == [None, None]
    request = PanelRequest(stages[0], [{"role": "user", "content": QUESTIONS[1]}])
    alone = _answer(pool, request, GREEDY)
    assert next(iter(pool.batch_stats().values()))["largest"] == 1
    first = [PanelRequest(stage, [{"role": "user", "content": QUESTIONS[0]}]) for stage in stages for _ in range(2)]
    generation, joined = _joined(pool, first, LONG, lambda: _answer(pool, request, GREEDY))
    assert not all(a.done for a in generation.answers)  # the first comparison was still generating
    generation.wait(timeout=300)
    assert next(iter(pool.batch_stats().values()))["largest"] == len(first) + 1  # one batch held all five rows
    assert (joined.text, joined.token_ids) == (alone.text, alone.token_ids)  # and it answered as alone


def test_concurrent_requests_keep_their_own_settings(cfg, stages, make_pool):
    pool = make_pool(cfg)
    long = PanelRequest(stages[1], [{"role": "user", "content": QUESTIONS[2]}])
    short = PanelRequest(stages[0], [{"role": "user", "content": QUESTIONS[3]}], stop=("，", "。"))
    short_decoding = Decoding(temperature=0.8, top_p=0.95, max_new_tokens=6, seed=77, top_k=20, min_p=0.05)
    penalised = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=30, seed=0, repetition_penalty=1.5)
    expected = [_answer(pool, long, LONG), _answer(pool, short, short_decoding), _answer(pool, long, penalised)]
    generation, others = _joined(
        pool, [long], LONG, lambda: _concurrently(pool, [(short, short_decoding), (long, penalised)])
    )
    got = [generation.wait(timeout=300)[0], *others]
    assert next(iter(pool.batch_stats().values()))["largest"] >= 2
    assert [(a.text, a.n_tokens, a.finish_reason) for a in got] == [
        (a.text, a.n_tokens, a.finish_reason) for a in expected
    ]
    assert got[1].n_tokens <= 6 and got[0].n_tokens > 6


def test_a_cancelled_request_leaves_and_the_others_finish(cfg, stages, make_pool):
    pool = make_pool(cfg)
    other = PanelRequest(stages[1], [{"role": "user", "content": QUESTIONS[4]}])
    alone = _answer(pool, other, LONG)
    cancelled = pool.generate([PanelRequest(stages[0], [{"role": "user", "content": QUESTIONS[5]}])], LONG)
    generation, _ = _joined(pool, [other], LONG, cancelled.cancel)
    (stopped,) = cancelled.wait(timeout=300)
    (finished,) = generation.wait(timeout=300)
    assert stopped.done and stopped.error is None and stopped.finish_reason is None  # cut short, not failed
    assert (finished.text, finished.token_ids, finished.finish_reason) == (
        alone.text,
        alone.token_ids,
        alone.finish_reason,
    )


def test_a_request_that_fails_in_a_batch_fails_alone(stages):
    cpt = str(stages[0].run_dir / "cpt")
    worker = ModelProcess(cpt, "cpu", torch.float32, threads=1, trust_remote_code=False, setting="cpt")
    try:
        vocab = worker.request("logits", (), [1, 2, 3]).shape[0]
        decoding = LONG.settings() | {"max_new_tokens": 100}
        streaming = threading.Event()

        def run(ids, out):
            steps = []

            def take(new):
                steps.extend(new)
                streaming.set()

            try:
                worker.generate([((), ids)], decoding, 0, [], take)
                out.append([step[0] for step in steps])
            except UserError as err:
                out.append(err)

        alone: list = []
        run([5, 6, 7, 8], alone)
        streaming.clear()
        good, bad = [], []
        thread = threading.Thread(target=run, args=([5, 6, 7, 8], good))
        thread.start()
        streaming.wait(timeout=120)
        run([5, vocab + 10], bad)  # a token the model does not have: it joins the batch, which fails
        thread.join(timeout=300)
        assert isinstance(bad[0], UserError) and "index" in str(bad[0]).lower()
        assert good == alone  # the good request went on, on its own, as if alone
        assert worker.alive and worker.request("stats")["batches"] >= 3
    finally:
        worker.close()


def test_sixteen_concurrent_api_requests_answer_as_sixteen_sequential_ones(tiny_run, tmp_path, record_property):
    with serve_copy_of(tiny_run, tmp_path) as (url, home, run_id):
        client = no_account_client(url)
        jobs = [
            dict(model=f"{run_id}/{stage}", messages=[{"role": "user", "content": q}], temperature=0, max_tokens=24)
            for q in QUESTIONS
            for stage in ("sft", "dpo")
        ]

        def ask(job: dict) -> str:
            return client.chat.completions.create(**job).choices[0].message.content

        ask(jobs[0])  # the first request loads the model and the screening's dictionaries: not timed
        started = time.perf_counter()
        sequential = [ask(job) for job in jobs]
        sequential_s = time.perf_counter() - started
        started = time.perf_counter()
        with ThreadPoolExecutor(len(jobs)) as executor:
            concurrent = list(executor.map(ask, jobs))
        concurrent_s = time.perf_counter() - started
    record_property("sequential_s", round(sequential_s, 3))
    record_property("concurrent_s", round(concurrent_s, 3))
    print(f"16 API requests: sequential {sequential_s:.2f} s, concurrent {concurrent_s:.2f} s")
    assert concurrent == sequential
