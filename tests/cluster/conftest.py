"""Cluster-test fixtures shared by modules: one operator process for the whole session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client

REPO = Path(__file__).resolve().parents[2]


def _operator_env(dev_env: dict[str, Any], **extra: str) -> dict[str, str]:
    return {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"],
            "MODELPILOT_MLFLOW_TRACKING_URI": dev_env["exports"]["MLFLOW_TRACKING_URI"],
            "MODELPILOT_PROMETHEUS_URL": dev_env["exports"]["PROMETHEUS_URL"],
            "MODELPILOT_ALIAS_POLL_SECONDS": "2", "MODELPILOT_RETRY_DELAY_SECONDS": "1",
            "MODELPILOT_ROLLOUT_TICK_SECONDS": "2", "MODELPILOT_ABTEST_REFRESH_SECONDS": "3", **extra}


@pytest.fixture(scope="session")
def metrics_port() -> int:
    from modelpilot_dev.environment import free_port

    return free_port()


@pytest.fixture(scope="session")
def crds_established(dev_env: dict[str, Any]) -> None:
    """crds/ applied (server-side) and both CRDs Established."""
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    kubectl = dev_env["binaries"]["kubectl"]
    applied = subprocess.run([kubectl, "apply", "--server-side", "-f", str(REPO / "crds")], env=env,
                             capture_output=True, text=True, timeout=60)
    assert applied.returncode == 0, applied.stderr
    # `kubectl wait` fails at once if a CRD is not visible yet: retry until both are Established.
    from modelpilot_dev.workloads import wait_for

    def established() -> bool:
        done = subprocess.run([kubectl, "wait", "--for=condition=Established", "--timeout=20s",
                               "crd/modelversions.modelpilot.io", "crd/abtests.modelpilot.io"], env=env,
                              capture_output=True, text=True, timeout=60)
        return done.returncode == 0

    wait_for(established, 120, 1.0, "the CRDs to be Established")


@pytest.fixture(scope="session")
def operator(dev_env: dict[str, Any], tmp_path_factory: pytest.TempPathFactory,
             metrics_port: int, crds_established: None) -> Iterator[subprocess.Popen[bytes]]:
    env = _operator_env(dev_env, MODELPILOT_PRIORITY="100", MODELPILOT_METRICS_PORT=str(metrics_port))
    logpath = tmp_path_factory.mktemp("operator") / "operator.log"
    log = logpath.open("wb")
    from modelpilot_dev.environment import free_port

    proc = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator", "--liveness",
                             f"http://127.0.0.1:{free_port()}/healthz"], env=env, stdout=log,
                            stderr=subprocess.STDOUT)
    proc.logpath = logpath  # type: ignore[attr-defined]
    yield proc
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


@pytest.fixture(scope="module")
def real_env(dev_env: dict[str, Any]) -> dict[str, Any]:
    """The session's environment, named for what the real node's own tests (test_real_node.py, test_gateway.py)
    rely on: its node is real (``modelpilot dev up`` starts one by default)."""
    assert (dev_env.get("node") or {}).get("mode") == "real", "the session's environment has no real node"
    return dev_env


@pytest.fixture(scope="session")
def custom(api_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)




@pytest.fixture(scope="session")
def operator_env(dev_env: dict[str, Any]) -> Any:
    """Build the environment of a further operator process (e.g. a standby replica)."""
    return lambda **extra: _operator_env(dev_env, **extra)
