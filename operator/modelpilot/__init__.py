"""modelpilot: take ML models from an MLflow registry into production on Kubernetes, and keep them safe there."""
