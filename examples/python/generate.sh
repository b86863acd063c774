#!/usr/bin/env bash
# Generates the Python message and gRPC stubs for the Broadside API from
# ../../proto into ./gen (git-ignored). Works from any directory.
#
#   examples/python/generate.sh            # uses python3
#   PYTHON=/path/to/python generate.sh     # another interpreter
#
# Needs grpcio-tools (see requirements.txt). The generated modules import each
# other as `broadside.v1.*`, so put gen/ on sys.path (watch_campaign.py does).
set -euo pipefail

here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
proto_root=$(cd "$here/../../proto" && pwd)
out=$here/gen
PYTHON=${PYTHON:-python3}

shopt -s nullglob
protos=("$proto_root"/broadside/v1/*.proto)
if ((${#protos[@]} == 0)); then
  echo "generate.sh: no .proto files under $proto_root/broadside/v1" >&2
  exit 1
fi

# Start clean so stubs of a removed .proto do not linger.
rm -rf "$out"
mkdir -p "$out"

# `python -m grpc_tools.protoc` adds the include path of the well-known types
# (google/protobuf/timestamp.proto) by itself.
"$PYTHON" -m grpc_tools.protoc \
  --proto_path="$proto_root" \
  --python_out="$out" \
  --pyi_out="$out" \
  --grpc_python_out="$out" \
  "${protos[@]}"

# Regular packages, so `import broadside.v1` never depends on namespace-package
# lookup finding the right folder first.
touch "$out/broadside/__init__.py" "$out/broadside/v1/__init__.py"

echo "generated Python stubs in $out:"
(cd "$out" && find . -name '*_pb2*.py' | sort | sed 's|^\./|  |')
