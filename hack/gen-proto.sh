#!/usr/bin/env bash
# Regenerate the Python modules for every .proto file of the package.
#
# Each .proto under nri_zeropod/ is compiled next to itself into <name>_pb2.py
# and <name>_pb2.pyi with the pinned grpcio-tools of the test extra. The
# generated modules are committed; tests/unit/test_generated_proto.py checks
# that they match what this script produces.
#
# Usage: hack/gen-proto.sh [OUTDIR]   (OUTDIR: write into a mirror tree instead)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
out_root=${1:-.}
find nri_zeropod -name '*.proto' | sort | while read -r proto; do
    dir=$(dirname "$proto")
    mkdir -p "$out_root/$dir"
    "$PY" -m grpc_tools.protoc -I"$dir" --python_out="$out_root/$dir" --pyi_out="$out_root/$dir" "$proto"
done
