"""The local environment: a real control plane, kwok nodes, a process runtime, MLflow and Prometheus."""
