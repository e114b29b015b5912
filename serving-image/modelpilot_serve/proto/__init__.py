"""Generated Open Inference Protocol gRPC modules (see grpc_predict_v2.proto; regenerate with scripts/gen-grpc.sh)."""
