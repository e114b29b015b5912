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


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="module")
def real_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """An environment with a real node (``modelpilot dev up --node real``) in its own state directory, for one
    module: test_real_node.py and test_gateway.py each bring up their own and stop it at their end, so the
    node's processes do not run beside the other modules' tests."""
    import signal
    import time

    from modelpilot_dev.environment import Environment

    home = tmp_path_factory.mktemp("realnode")
    env = Environment(home)
    # A CI timeout sends SIGTERM: turn it into KeyboardInterrupt so the teardown below still removes the
    # node's namespace, veth and iptables rules (the node's supervisor runs in a session of its own).
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.monotonic()
    state = env.up(node="real")
    print(f"\n[real node] environment with a real node up in {time.monotonic() - started:.1f}s")
    state["environment"] = env
    try:
        yield state
    finally:
        env.down(quiet=True)


@pytest.fixture(scope="session")
def custom(api_client: Any) -> client.CustomObjectsApi:
    return client.CustomObjectsApi(api_client)




@pytest.fixture(scope="session")
def operator_env(dev_env: dict[str, Any]) -> Any:
    """Build the environment of a further operator process (e.g. a standby replica)."""
    return lambda **extra: _operator_env(dev_env, **extra)
