"""Shared pytest fixtures: the real local environment (session-scoped) and per-test namespaces.

Tests under tests/cluster/ are marked ``cluster`` automatically and run against
a local environment that this session starts with the same code as
``modelpilot dev up`` (in its own state directory and ports, so a developer's
running environment is left alone) and stops at the end.
"""

from __future__ import annotations

import os
import signal
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/cluster/" in str(item.path).replace(os.sep, "/"):
            item.add_marker(pytest.mark.cluster)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def dev_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """A running local environment; yields its state (ports, exports, binaries)."""
    from modelpilot_dev.environment import Environment

    home = Path(os.environ.get("MODELPILOT_TEST_HOME") or tmp_path_factory.mktemp("devenv"))
    env = Environment(home)
    # A CI timeout or Ctrl-C sends a signal: turn it into KeyboardInterrupt so the teardown
    # below still stops every process the session started.
    signal.signal(signal.SIGTERM, _interrupt)
    state = env.up()
    state["environment"] = env
    try:
        yield state
    finally:
        env.down(quiet=True)


@pytest.fixture(scope="session")
def api_client(dev_env: dict[str, Any]) -> Any:
    from kubernetes import config

    return config.new_client_from_config(dev_env["exports"]["KUBECONFIG"])


@pytest.fixture(scope="session")
def core(api_client: Any) -> Any:
    from kubernetes import client

    return client.CoreV1Api(api_client)


@pytest.fixture(scope="session")
def apps(api_client: Any) -> Any:
    from kubernetes import client

    return client.AppsV1Api(api_client)


@pytest.fixture
def namespace(core: Any) -> Iterator[str]:
    """A fresh namespace per test, deleted afterwards (its pods' processes stop with it)."""
    name = f"t-{uuid.uuid4().hex[:8]}"
    core.create_namespace({"metadata": {"name": name}})
    try:
        yield name
    finally:
        core.delete_namespace(name)


@pytest.fixture(scope="session")
def iris_version(dev_env: dict[str, Any]) -> str:
    """A real scikit-learn model registered in the environment's MLflow as 'iris'."""
    from modelpilot_dev.workloads import register_iris_model

    return register_iris_model(dev_env["exports"]["MLFLOW_TRACKING_URI"], "iris")
