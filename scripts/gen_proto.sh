#!/usr/bin/env bash
# Regenerate the Python gRPC modules from herd/services/rpc/herd.proto (committed output).
# Needs grpcio-tools (pip install -e '.[dev]').
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}"
"$PY" -m grpc_tools.protoc -I . --python_out=. --pyi_out=. --grpc_python_out=. \
    herd/services/rpc/herd.proto
echo "generated herd/services/rpc/herd_pb2.py, herd_pb2.pyi, herd_pb2_grpc.py"
