# Sourced by engine.sh and vllm.sh: where an engine environment goes and what builds it.
#
# As root the cache is /var/cache/modelplane/engines and the interpreter /usr/bin/python3.11,
# so the engine user (MODELPLANE_ENGINE_USER, default nobody) can run what is installed there
# (pyenv's Python and ~/.cache live under /root, which is 0700). Otherwise the cache is
# ~/.cache/modelplane/engines: a server that is not root runs its engines as its own user.
# Sets PYTHON (runs uv), ENGINE_PYTHON (the venv's interpreter), ENGINE_USER, CACHE, SITE;
# defines check_tools (uv, and Python 3.11 for the venv) and make_work NAME (a temporary folder
# in the cache the engine user can enter, removed on exit unless renamed into place).

PYTHON="${PYTHON:-python3}"
ENGINE_USER="${MODELPLANE_ENGINE_USER-nobody}"
if [[ $EUID -eq 0 ]]; then
  CACHE="${MODELPLANE_ENGINE_CACHE:-/var/cache/modelplane/engines}"
  # The engine's interpreter must be one the engine user can run.
  [[ -z "${ENGINE_PYTHON:-}" && -x /usr/bin/python3.11 ]] && ENGINE_PYTHON=/usr/bin/python3.11
else
  CACHE="${MODELPLANE_ENGINE_CACHE:-$HOME/.cache/modelplane/engines}"
  ENGINE_USER=""
fi
ENGINE_PYTHON="${ENGINE_PYTHON:-$PYTHON}"
SITE="venv/lib/python3.11/site-packages"

check_tools() {
  "$PYTHON" -m uv --version >/dev/null 2>&1 || { log "uv is missing: run make setup first"; exit 1; }
  "$ENGINE_PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' \
    || { log "$ENGINE_PYTHON is not Python 3.11 (the engine environment is made with it)"; exit 1; }
}

make_work() {
  mkdir -p "$CACHE"
  chmod 755 "$CACHE"
  work="$(mktemp -d "$CACHE/.$1.XXXXXX")"
  chmod 755 "$work"  # mktemp makes it 0700: the engine user could not enter it
  trap 'rm -rf "$work"' EXIT
}
