"""The app's model pool on the tiny run: shared weights, exact adapter stacking, concurrent panels
and sessions, failures that stay in their own panel, and a model process that dies."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import pytest
import torch

from app.contestants import resolve_contestants
from app.serving.memory import weight_bytes
from app.serving.model_process import ModelProcess
from app.serving.pool import PanelRequest
from app.serving.sampling import Decoding
from core.config import load_config
from core.errors import UserError
from core.registry import run_stages
from tests.serving_helpers import next_token_logits, worker_pids
from training.manifest import read_manifest
from training.modeling import load_stage

STAGES = run_stages(load_config("tiny"))  # the tiny run's: base, cpt, sft, dpo

QUESTION = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]
GREEDY = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=12, seed=0)


@pytest.fixture
def run(cfg, app_home):
    home, run_id = app_home
    return resolve_contestants(cfg, [f"{run_id}/{stage}" for stage in STAGES])


def _texts(pool, contestants, decoding, messages=QUESTION):
    answers = pool.generate([PanelRequest(c, messages) for c in contestants], decoding).wait(timeout=300)
    assert all(a.error is None and a.done for a in answers), answers
    return [a.text for a in answers]


def test_four_contestants_hold_one_model_and_a_difference(cfg, run, make_pool):
    cfg = load_config("tiny", ["app.delta_bits=8"])  # cpt held as base + its 8-bit difference
    pool = make_pool(cfg)
    assert pool.preload(run) == [None] * 4
    roots = {os.path.basename(path): adapters for path, adapters in pool.loaded().items()}
    assert set(roots) == {"base", "cpt"}  # sft and dpo ride on cpt as adapters
    assert roots["base"] == [] and len(roots["cpt"]) == 2  # sft's and dpo's adapters, each once
    _texts(pool, run, GREEDY)  # every weight page is read once
    one_model = weight_bytes(load_stage(run[1].run_dir, "cpt")[0])  # counted as the workers count theirs
    adapters = sum(os.path.getsize(next((c.run_dir / c.stage).glob("adapter_model.*"))) for c in run[2:])
    # base's weights once, cpt as base + its difference in 8 bits (a quarter of a model), each adapter once
    assert pool.resident_bytes() < 1.3 * one_model + adapters
    memory = pool.worker_memory()
    (cache,) = {file for m in memory for file in m["mapped"]}  # both workers map the one file of base
    assert Path(cache).parent == cfg.home / "cache" / "serving"
    pids = worker_pids(pool)
    assert len(set(pids)) == 2 and os.getpid() not in pids  # each full model in a process of its own
    for pid in pids:  # ... reading the same physical pages of that file
        resident, shared = _mapped_pages(pid, cache)
        assert resident > 0.9 * os.path.getsize(cache) and shared > 0.9 * resident
    if len(os.sched_getaffinity(0)) >= 2:  # ... on a core of its own, so both answer at the same time
        cores = [os.sched_getaffinity(pid) for pid in pids]
        assert all(len(c) == cfg.app.cpu_threads for c in cores) and not cores[0] & cores[1]


def _mapped_pages(pid: int, path: str) -> tuple[int, int]:
    """Bytes of ``path`` resident in process ``pid``'s mappings of it, and of those the pages other
    processes map too (/proc/PID/smaps)."""
    resident = shared = 0
    inside = False
    for line in Path(f"/proc/{pid}/smaps").read_text().splitlines():
        fields = line.split()
        if "-" in fields[0] and len(fields) >= 5:  # a mapping's header line
            inside = line.endswith(path)
        elif inside and fields[0] == "Rss:":
            resident += int(fields[1]) * 1024
        elif inside and fields[0] in ("Shared_Clean:", "Shared_Dirty:"):
            shared += int(fields[1]) * 1024
    return resident, shared


def _assert_served_as_merged(pool, contestants, exact=True):
    """Each contestant's next-token logits in the pool equal those of its checkpoint loaded merged (or,
    with a full model held as an 8-bit difference, pick the same token and stay within 2% of the logits'
    range)."""
    for contestant in contestants:
        served = next_token_logits(pool, contestant, QUESTION)
        model, tokenizer = load_stage(contestant.run_dir, contestant.stage, device="cpu")
        ids = torch.tensor([tokenizer.apply_chat_template(QUESTION, add_generation_prompt=True)["input_ids"]])
        with torch.inference_mode():
            merged = model(input_ids=ids).logits[0, -1]
        error = (served - merged).abs().max()
        if exact or contestant.stage == "base":
            assert torch.allclose(served, merged, atol=1e-4), (contestant.stage, error)
        else:
            assert served.argmax() == merged.argmax() and error < 0.02 * (merged.max() - merged.min()), (
                contestant.stage,
                error,
            )


@pytest.mark.parametrize("delta_bits", [0, 8])
def test_served_stages_match_the_merged_checkpoints(app_home, delta_bits, make_pool):
    home, run_id = app_home
    cfg = load_config("tiny", [f"app.delta_bits={delta_bits}"])
    pool = make_pool(cfg)
    _assert_served_as_merged(pool, resolve_contestants(cfg, [f"{run_id}/{s}" for s in STAGES]), exact=delta_bits == 0)
    if delta_bits == 0:  # cpt held whole: its own file, not base's
        assert len({file for m in pool.worker_memory() for file in m["mapped"]}) == 2


def test_an_unknown_delta_setting_is_refused(app_home):
    from app.serving.pool import ModelPool

    with pytest.raises(UserError, match="app.delta_bits=4"):
        ModelPool(load_config("tiny", ["app.delta_bits=4"]))


def test_an_answer_depends_on_its_seed_not_on_the_other_panels(cfg, run, make_pool):
    pool = make_pool(cfg)
    sampled = Decoding(temperature=1.0, top_p=0.9, max_new_tokens=12, seed=1234)
    together = _texts(pool, run, sampled)
    alone = [_texts(pool, [c], sampled)[0] for c in run]
    assert together == alone
    assert _texts(pool, run, GREEDY) == [_texts(pool, [c], GREEDY)[0] for c in run]
    assert _texts(pool, run, sampled) == together  # the same seed again gives the same answers


def test_concurrent_sessions_each_get_their_own_answers(cfg, run, make_pool):
    pool = make_pool(cfg)
    prompts = [[{"role": "user", "content": q}] for q in ("头痛怎么办？", "糖尿病有哪些症状？", "感冒要吃药吗？")]
    jobs = [(messages, Decoding(0.9, 0.95, 10, seed)) for messages in prompts for seed in (1, 2)]
    expected = [_texts(pool, run, decoding, messages) for messages, decoding in jobs]
    results: dict[int, list[str]] = {}
    barrier = threading.Barrier(len(jobs))

    def session(i, messages, decoding):
        barrier.wait()
        results[i] = _texts(pool, run, decoding, messages)

    threads = [threading.Thread(target=session, args=(i, *job)) for i, job in enumerate(jobs)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert [results[i] for i in range(len(jobs))] == expected


def test_a_broken_checkpoint_fails_only_its_own_panel(cfg, run, make_pool):
    adapter = next((run[3].run_dir / "dpo").glob("adapter_model.*"))
    adapter.unlink()  # the copy in this test's home may be a hard link: replace, never write through it
    adapter.write_bytes(b"not a safetensors file")
    answers = make_pool(cfg).generate([PanelRequest(c, QUESTION) for c in run], GREEDY).wait(timeout=300)
    assert answers[3].error and answers[3].done and answers[3].text == ""
    assert [a.error for a in answers[:3]] == [None, None, None]
    assert all(a.done and a.n_tokens > 0 for a in answers[:3])


def test_a_resumed_run_shares_the_weights_it_reused(cfg, app_home, run, make_pool):
    home, run_id = app_home
    copy = home / "runs" / "resumed"
    shutil.copytree(home / "runs" / run_id, copy, copy_function=os.link)  # what --from dpo --resume-run does
    manifest = (copy / "manifest.json").read_text(encoding="utf-8").replace(f'"{run_id}"', '"resumed"')
    (copy / "manifest.json").unlink()  # a hard link too: write a new file, not through the link
    (copy / "manifest.json").write_text(manifest, encoding="utf-8")
    pool = make_pool(cfg)
    both = resolve_contestants(cfg, [f"{run_id}/dpo", "resumed/dpo"])
    assert pool.preload(both) == [None, None]
    assert len(pool.loaded()) == 1  # one cpt in memory for both runs
    pool = make_pool(load_config("tiny", ["app.delta_bits=8"]))
    assert pool.preload(resolve_contestants(cfg, ["resumed/cpt", f"{run_id}/base"])) == [None, None]
    # the resumed run's cpt is held on its own base's weights: one file with the first run's base
    assert len({file for m in pool.worker_memory() for file in m["mapped"]}) == 1


@pytest.mark.parametrize(
    "bad", [dict(temperature=-1.0), dict(top_p=0.0), dict(max_new_tokens=0), dict(max_new_tokens=2.5), dict(seed=-3)]
)
def test_bad_decoding_settings_are_refused(bad):
    settings = dict(temperature=0.7, top_p=0.9, max_new_tokens=16, seed=0) | bad
    with pytest.raises(UserError):
        Decoding(**settings)


def test_a_model_process_that_dies_fails_its_panels_and_is_started_again(cfg, run, make_pool):
    pool = make_pool(cfg)
    expected = _texts(pool, run, GREEDY)
    (cpt_root,) = [path for path in pool.loaded() if os.path.basename(path) == "cpt"]
    pids = dict(zip(pool.loaded(), worker_pids(pool)))
    # as long as the context leaves room for after the question (a longer one is refused, not cut to fit)
    long = Decoding(temperature=1.0, top_p=1.0, max_new_tokens=cfg.model.max_position_embeddings - 32, seed=5)
    generation = pool.generate([PanelRequest(c, QUESTION) for c in run], long)
    deadline = time.monotonic() + 120
    while not all(a.n_tokens for a in generation.answers[1:]) and time.monotonic() < deadline:
        time.sleep(0.01)  # until cpt, sft and dpo are streaming
    os.kill(pids[cpt_root], signal.SIGKILL)  # what the out-of-memory killer does
    answers = generation.wait(timeout=300)
    assert answers[0].error is None and answers[0].done  # base runs in its own process
    assert all(a.done for a in answers[1:])
    failed = [a for a in answers[1:] if a.error]
    assert failed and all("stopped" in a.error and "loaded again" in a.error for a in failed)
    assert all(a.n_tokens > 0 for a in answers[1:] if not a.error)  # one finished before the kill keeps its text
    assert _texts(pool, run, GREEDY) == expected  # the next question starts a new process
    assert pids[cpt_root] not in worker_pids(pool)


def test_a_reader_that_fails_mid_answer_leaves_the_model_process_ready(run):
    cpt = str(run[1].run_dir / "cpt")
    worker = ModelProcess(cpt, "cpu", torch.float32, threads=1, trust_remote_code=False, setting="cpt")
    try:
        calls = []

        def broken_reader(tokens):
            calls.append(tokens)
            raise RuntimeError("the panel went away")

        with pytest.raises(RuntimeError, match="went away"):
            worker.generate(
                [((), [1, 2, 3])],
                Decoding(temperature=1.0, top_p=1.0, max_new_tokens=200, seed=0).settings(),
                0,
                [],
                broken_reader,
            )
        assert len(calls) == 1  # stopped after the failure, not fed the rest
        assert worker.request("memory")["weights"] > 0  # the next answer is its own, not a leftover token
        logits = worker.request("logits", (), [1, 2, 3])
        assert logits.shape == (worker_vocab(cpt),)
    finally:
        worker.close()
    assert not worker.process.is_alive()


def worker_vocab(path):
    return json.loads((Path(path) / "config.json").read_text(encoding="utf-8"))["vocab_size"]


def test_a_run_with_a_lora_cpt_serves_its_four_contestants_on_one_model(cfg, app_home, make_pool):
    from training.pipeline import train_all

    home, run_id = app_home
    lora_run = train_all(
        load_config("tiny", ["cpt.use_lora=true", "train.evaluate_after=false"]), from_stage="cpt", resume_run=run_id
    )
    stages = read_manifest(cfg, lora_run)["stages"]
    assert (stages["cpt"]["kind"], stages["cpt"]["parent"]) == ("lora", "base")
    contestants = resolve_contestants(cfg, [f"{lora_run}/{stage}" for stage in STAGES])
    pool = make_pool(cfg)
    assert pool.preload(contestants) == [None] * 4
    ((root, adapters),) = pool.loaded().items()  # one full model: the base, with cpt, sft and dpo on it
    assert os.path.basename(root) == "base" and len(adapters) == 3
    _assert_served_as_merged(pool, contestants)
    assert all(
        a.error is None and a.n_tokens > 0
        for a in pool.generate([PanelRequest(c, QUESTION) for c in contestants], GREEDY).wait(timeout=300)
    )


def test_models_beyond_the_limit_are_dropped_when_idle_and_loaded_again_when_asked(cfg, run, make_pool):
    expected = _texts(make_pool(cfg), run, GREEDY)
    pool = make_pool(cfg, max_loaded_models=1)
    assert pool.preload(run) == [None] * 4
    assert len(pool.loaded()) == 1 and len(worker_pids(pool)) == 1  # the other model's process has ended
    assert _texts(pool, run[:1], GREEDY) + _texts(pool, run[1:], GREEDY) == expected
    deadline = time.monotonic() + 30  # (the answering thread drops the idle model after the answers are out)
    while len(worker_pids(pool)) > 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(worker_pids(pool)) == 1 and os.path.basename(next(iter(pool.loaded()))) == "cpt"
