#!/usr/bin/env bash
# Sets up a fresh machine and runs one thing: `demo` (the simulated line, headed) or `test` (the test suite).
#   bash scripts/bootstrap.sh demo [demo options...]
#   bash scripts/bootstrap.sh test [pytest options...]
set -euo pipefail
cd "$(dirname "$0")/.."
what="${1:-demo}"; shift || true

# System packages: Mosquitto (the broker of the demo and the tests), DejaVu fonts (shift handovers as PDF),
# Chromium (browser test of the dashboard), poppler-utils (the tests look at the handover PDF as a picture) and
# PostgreSQL (its binaries: the tests of the site-wide store run a throwaway server of their own).
need=()
command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need+=(fonts-dejavu-core)
if [ "$what" = test ]; then
  command -v chromium >/dev/null || need+=(chromium)
  command -v pdftoppm >/dev/null || need+=(poppler-utils)
  compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null || need+=(postgresql)
fi
if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need[@]}" >/dev/null
  else
    echo "note: ${need[*]} not installed (needs root and apt-get); the demo and tests fall back to the embedded amqtt broker (MQTT 3.1.1 only)" >&2
  fi
fi

PY="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip

# llama-cpp-python builds from source (~12 min on 2 cores), once per version and build flags. On x86_64 it is
# built without AMX: ggml's AMX kernels die with SIGILL on machines (VMs) that list AMX but do not keep its tile
# state, and the AVX-512/AVX2 kernels serve instead (FC_LLAMA_CFLAGS= builds with AMX, for bare metal).
# The wheel goes to a wheelhouse keyed by version and flags, because pip's own wheel cache ignores build flags.
llama_wheelhouse() {
  local pin flags key dir
  pin=$(.venv/bin/python -c 'import tomllib; d = tomllib.load(open("pyproject.toml", "rb")); print(next(r for r in d["project"]["optional-dependencies"]["llm"] if r.startswith("llama-cpp-python")))')
  if [ "$(uname -m)" = x86_64 ]; then flags="${FC_LLAMA_CFLAGS--mno-amx-tile -mno-amx-int8 -mno-amx-bf16}"; else flags="${FC_LLAMA_CFLAGS-}"; fi
  key=$(printf '%s|%s|%s|%s|%s' "$pin" "$flags" "${CMAKE_ARGS:-}" "$(uname -m)" "$(.venv/bin/python -c 'import sys; print(sys.version_info[:2])')" | sha256sum | cut -c1-16)
  dir="${FC_WHEELHOUSE:-$HOME/.cache/factory-copilot/wheels}/$key"
  if ! ls "$dir"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    mkdir -p "$dir"
    echo "building $pin (CFLAGS '$flags'); about 12 minutes on 2 cores, once" >&2
    CFLAGS="$flags" CXXFLAGS="$flags" .venv/bin/python -m pip wheel -q --no-deps --no-cache-dir -w "$dir" "$pin" >&2
  fi
  echo "$dir"
}

case "$what" in
  demo)
    # the demo shows the model (llama-cpp-python from the wheelhouse, the model pulled once); --no-model skips both
    extras="${FC_EXTRAS-llm}"
    case " $* " in *" --no-model "*) extras="${FC_EXTRAS-}" ;; esac
    links=()
    case ",$extras," in *,llm,*) links=(--find-links "$(llama_wheelhouse)") ;; esac
    .venv/bin/python -m pip install -q "${links[@]}" -e ".${extras:+[$extras]}"
    exec .venv/bin/factory-copilot demo "$@" ;;
  test)
    .venv/bin/python -m pip install -q --find-links "$(llama_wheelhouse)" -e ".[llm,dev]"
    exec .venv/bin/python -m pytest -q "$@" ;;
  *) echo "usage: $0 demo|test [options]" >&2; exit 2 ;;
esac
