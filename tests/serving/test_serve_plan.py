"""``./launch.sh serve-plan``: which stages of a run vLLM serves as exports, which as LoRA adapters, on which
ports and GPUs, and the ``app.endpoints`` entries that point the arena at them (tiny run)."""

from __future__ import annotations

import json
import shlex

import pytest
import yaml

from app.serving.plan import DEFAULT_PORT, plan_vllm
from chimed import build_parser, main
from core.config import config_from_dict, load_config
from core.errors import UserError


def _plan(run, **options):
    home, run_id = run
    return plan_vllm(load_config("tiny"), run_id, **options), home, run_id


def test_full_and_stacked_stages_are_exported_and_a_single_adapter_rides_on_its_parent(tiny_run, use_home):
    use_home(tiny_run[0])
    plan, home, run_id = _plan(tiny_run, port=9100)

    # base and cpt are full weights; dpo is cpt + sft + dpo adapters, which vLLM cannot stack: merged
    assert [e.stage for e in plan.exports] == ["base", "cpt", "dpo"]
    assert all(e.out == home / "exports" / run_id / e.stage and not e.exists for e in plan.exports)
    assert "cannot stack 2 adapters" in next(e for e in plan.exports if e.stage == "dpo").reason
    # sft is one adapter on cpt: cpt's server serves it from the run's own sft directory
    assert [s.stage for s in plan.servers] == ["base", "cpt", "dpo"]
    cpt = plan.server_for("sft")
    assert cpt.stage == "cpt" and [(a.stage, a.path) for a in cpt.adapters] == [("sft", home / "runs" / run_id / "sft")]
    sft_rank = load_config("tiny").sft.lora.r
    argv = cpt.gpu_argv(plan.host, plan.dtype, 1, False)
    assert argv[:3] == ["vllm", "serve", str(home / "exports" / run_id / "cpt")]
    assert argv[argv.index("--lora-modules") + 1] == f"{run_id}/sft={home / 'runs' / run_id / 'sft'}"
    assert int(argv[argv.index("--max-lora-rank") + 1]) >= sft_rank
    # every stage is served exactly once, each server on a port of its own from --port on
    served = [stage for s in plan.servers for stage, _ in s.models]
    assert sorted(served) == sorted(["base", "cpt", "sft", "dpo"])
    assert [s.port for s in plan.servers] == [9100, 9101, 9102]
    assert [s.gpus for s in plan.servers] == [(0,), (1,), (2,)] and all(
        s.gpu_memory_utilization is None for s in plan.servers
    )
    # no --api-key-env: the servers take no key, and the entries send none
    assert all(e.api_key_env == "" for e in load_config("tiny", [plan.endpoints_override()]).app.endpoints)
    servers = [line for line in plan.render(load_config("tiny")).splitlines() if " vllm serve " in line]
    assert len(servers) == 3 and not any("--api-key" in line for line in servers)


def test_endpoint_entries_parse_back_into_the_config(tiny_run, use_home):
    use_home(tiny_run[0])
    plan, _, run_id = _plan(tiny_run, host="10.0.0.5", port=9200, api_key_env="VLLM_API_KEY")

    from_yaml = config_from_dict(yaml.safe_load(plan.endpoints_yaml())).app.endpoints
    from_override = load_config("tiny", [plan.endpoints_override()]).app.endpoints
    assert from_yaml == from_override
    by_model = {e.model: e for e in from_yaml}
    assert set(by_model) == {f"{run_id}/{s}" for s in ("base", "cpt", "sft", "dpo")}
    assert by_model[f"{run_id}/sft"].base_url == by_model[f"{run_id}/cpt"].base_url == "http://10.0.0.5:9201/v1"
    assert by_model[f"{run_id}/dpo"].base_url == "http://10.0.0.5:9202/v1"
    assert len({e.name for e in from_yaml}) == 4
    assert all(
        e.api_key_env == "VLLM_API_KEY" and e.max_concurrency == load_config("tiny").app.concurrent_comparisons
        for e in from_yaml
    )
    # base and cpt answer plain text: their endpoints end an answer at the next turn, where the pool cuts it
    assert {s: by_model[f"{run_id}/{s}"].stop for s in ("base", "cpt", "sft", "dpo")} == {
        "base": ["\n问：", "\n答："],
        "cpt": ["\n问：", "\n答："],
        "sft": [],
        "dpo": [],
    }


def test_printed_commands_are_valid_and_skip_a_finished_export(app_home, capsys):
    home, run_id = app_home
    from training.export.checkpoints import export_stage

    export_stage(load_config("tiny"), run_id, "dpo", home / "exports" / run_id / "dpo")
    assert main(["serve-plan", "--profile", "tiny", "--run", run_id, "--api-key-env", "VLLM_API_KEY"]) == 0
    out = capsys.readouterr().out
    commands = [line for line in out.splitlines() if line and not line.startswith("#")]

    # the export commands parse with the project's own command line: they run as printed
    exports = [shlex.split(c) for c in commands if c.startswith("./launch.sh export")]
    parsed = [build_parser().parse_args(argv[1:]) for argv in exports]
    assert [(a.run, a.stage, a.dtype) for a in parsed] == [(run_id, "base", "bfloat16"), (run_id, "cpt", "bfloat16")]
    # the finished dpo export is shown as done (commented out), not run again
    assert f"# ./launch.sh export --profile tiny --run {run_id} --stage dpo" in out and "exists" in out
    servers = [c for c in commands if "vllm serve" in c]
    assert len(servers) == 3 and all(c.endswith('--api-key "$VLLM_API_KEY" &') for c in servers)
    assert [shlex.split(c)[shlex.split(c).index("--port") + 1] for c in servers] == [
        str(DEFAULT_PORT + i) for i in range(3)
    ]
    # the app line carries the endpoints as an override the config accepts
    app_line = next(c for c in commands if c.startswith("./launch.sh app"))
    override = shlex.split(app_line)[-1]
    assert len(load_config("tiny", [override]).app.endpoints) == 4
    assert "pip install vllm" in out and "setup-vllm" in out


def test_an_adapter_vllm_cannot_load_is_exported_merged(app_home):
    home, run_id = app_home
    config = home / "runs" / run_id / "sft" / "adapter_config.json"
    info = json.loads(config.read_text())
    config.write_text(json.dumps(info | {"use_dora": True}))

    plan = plan_vllm(load_config("tiny"), run_id)
    assert [e.stage for e in plan.exports] == ["base", "cpt", "sft", "dpo"]
    assert "DoRA" in next(e for e in plan.exports if e.stage == "sft").reason
    assert all(not s.adapters for s in plan.servers) and len({s.port for s in plan.servers}) == 4


def test_servers_share_fewer_gpus_and_tensor_parallel_takes_sets(tiny_run, use_home):
    use_home(tiny_run[0])
    one_gpu, _, _ = _plan(tiny_run, gpus=1)
    assert [s.gpus for s in one_gpu.servers] == [(0,)] * 3
    assert sum(s.gpu_memory_utilization for s in one_gpu.servers) <= 0.9
    assert "share 1 GPU" in " ".join(one_gpu.notes)

    tp, _, _ = _plan(tiny_run, tensor_parallel=2)
    assert [s.gpus for s in tp.servers] == [(0, 1), (2, 3), (4, 5)]
    argv = tp.servers[0].gpu_argv(tp.host, tp.dtype, tp.tensor_parallel, False)
    assert argv[argv.index("--tensor-parallel-size") + 1] == "2"
    assert "--gpu-memory-utilization" not in argv

    with pytest.raises(UserError, match="fewer than --tensor-parallel 2"):
        _plan(tiny_run, tensor_parallel=2, gpus=1)


def test_unknown_run_is_a_one_line_error(tiny_run, use_home, capsys):
    use_home(tiny_run[0])
    assert main(["serve-plan", "--profile", "tiny", "--run", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no run 'nope'") and tiny_run[1] in err and err.count("\n") == 1
