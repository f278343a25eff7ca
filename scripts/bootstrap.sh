#!/usr/bin/env bash
# Sets up a fresh machine and runs one thing: `demo` (the simulated line, headed) or `test` (the test suite).
#   bash scripts/bootstrap.sh demo [demo options...]
#   bash scripts/bootstrap.sh test [pytest options...]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-demo}"; shift || true

# System packages: Mosquitto (real broker for tests), Chromium (browser test of the dashboard).
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
if [ "$what" = test ]; then command -v chromium >/dev/null || need+=(chromium); fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} not installed (needs root and apt-get); tests fall back to the embedded broker" >&2
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
case "$what" in
  demo)
    extras="${FC_EXTRAS:-}"
    .venv/bin/python -m pip install -q -e ".${extras:+[$extras]}"
    exec .venv/bin/factory-copilot demo "$@" ;;
  test)
    # llama-cpp-python builds from source the first time (~12 min on 2 cores); pip caches the wheel
    .venv/bin/python -m pip install -q -e ".[llm,dev]"
    exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: $0 demo|test [options]" >&2; exit 2 ;;
esac
