"""The local environment: a real control plane, a real node (kwok nodes only for benchmarks), MLflow and Prometheus."""
