#!/usr/bin/env bash
# Regenerates src/factory_copilot/plumbing/sparkplug_b_pb2.py from sparkplug_b.proto beside it.
# protoc 26.1 (grpcio-tools 1.64) writes gencode for protobuf 5.26.1, the oldest runtime the project
# accepts (protobuf>=5.26.1 in pyproject.toml); newer runtimes load older gencode. The generator lives
# in a throw-away venv: it is not a dependency of the project.
set -euo pipefail
cd "$(dirname "$0")/../src"
venv="${PROTOC_VENV:-/tmp/factory-copilot-protoc}"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install -q "grpcio-tools==1.64.1"
"$venv/bin/python" -m grpc_tools.protoc --proto_path=. --python_out=. factory_copilot/plumbing/sparkplug_b.proto
echo "wrote src/factory_copilot/plumbing/sparkplug_b_pb2.py"
