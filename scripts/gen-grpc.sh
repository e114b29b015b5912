#!/usr/bin/env bash
# Regenerate the Python modules of the Open Inference Protocol gRPC service
# from serving-image/modelpilot_serve/proto/grpc_predict_v2.proto:
#   grpc_predict_v2_pb2.py(.pyi)   messages        (protoc --python_out/--pyi_out)
#   grpc_predict_v2_pb2_grpc.py    service stubs   (grpc_tools' --grpc_python_out)
# Run it after editing the .proto and commit the result: the serving image and
# the tests import the generated code; nothing generates it at build time.
#
# Uses grpcio-tools from the project's virtualenv (the `dev` extra; PYTHON
# overrides the interpreter). The generated code checks at import that the
# protobuf and grpcio runtimes are at least the versions that generated it
# (protoc 33.x → protobuf 6.33, grpcio-tools X → grpcio X), so the `serve`
# extra's floors and serving-image/requirements.txt must follow the generator.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
DIR=serving-image/modelpilot_serve/proto
"$PYTHON" -m grpc_tools.protoc -I "$DIR" \
  --python_out="$DIR" --pyi_out="$DIR" --grpc_python_out="$DIR" \
  "$DIR/grpc_predict_v2.proto"
# protoc writes `import grpc_predict_v2_pb2`, which only resolves with the
# directory itself on sys.path; inside the package it must be relative.
sed -i 's/^import grpc_predict_v2_pb2 as /from . import grpc_predict_v2_pb2 as /' "$DIR/grpc_predict_v2_pb2_grpc.py"
# protoc registers the messages in protobuf's process-wide default pool, where
# Triton's own client (tritonclient.grpc) registers the same `inference.*`
# names from its grpc_service.proto: importing both in one process (a client
# next to an embedded server, our tests) fails with "duplicate symbol". A pool
# of our own keeps the wire format and names and avoids the clash.
sed -i 's/^DESCRIPTOR = _descriptor_pool\.Default()\.AddSerializedFile(/DESCRIPTOR = _descriptor_pool.DescriptorPool().AddSerializedFile(/' \
  "$DIR/grpc_predict_v2_pb2.py"
grep -q '^DESCRIPTOR = _descriptor_pool.DescriptorPool()' "$DIR/grpc_predict_v2_pb2.py" \
  || { echo "error: the generated grpc_predict_v2_pb2.py changed shape; update the private-pool edit above" >&2; exit 1; }
"$PYTHON" -c "import modelpilot_serve.proto.grpc_predict_v2_pb2_grpc" # fails loudly on a runtime/gencode mismatch
echo "regenerated $DIR/grpc_predict_v2_pb2.py, grpc_predict_v2_pb2.pyi, grpc_predict_v2_pb2_grpc.py with $("$PYTHON" -m grpc_tools.protoc --version)"
