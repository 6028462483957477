#!/bin/sh
# Generates Python modules for Arcana Cloud's public gRPC API from the buf module in proto/, with
# Debian's protoc and gRPC plugin (apt-get install protobuf-compiler protobuf-compiler-grpc
# libprotobuf-dev python3-grpcio python3-protobuf). The output is a build artifact: it is not
# committed, and the tests generate it afresh. Usage: clients/python/generate.sh OUT_DIR
set -eu
out=${1:?usage: generate.sh OUT_DIR}
plugin=$(command -v grpc_python_plugin) || {
  echo "grpc_python_plugin not found: apt-get install protobuf-compiler-grpc" >&2
  exit 1
}
mkdir -p "$out"
out=$(cd "$out" && pwd)
cd "$(dirname "$0")/../../proto"
# The public services and the google.rpc messages their errors carry. The well-known types
# (google/protobuf/*.proto) come from libprotobuf-dev; python3-protobuf ships their modules. The
# internal layer protos are not for outside callers.
# shellcheck disable=SC2046 # the file list is split on purpose; no path has a space
protoc -I . --python_out="$out" --grpc_python_out="$out" --plugin=protoc-gen-grpc_python="$plugin" \
  $(find arcana google -name '*.proto' -not -path 'arcana/internal/*' | sort)
