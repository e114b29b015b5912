"""`modelpilot dev up | status | env | down` as a user runs them, on a second environment of its own (with its
own real node: its own network namespace, /30, pod /24 and Service /20 beside the session's)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

from modelpilot_dev.environment import Environment, port_bound

CLI = [sys.executable, "-m", "modelpilot.cli"]


def _run(*args: str, home: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*CLI, "dev", "--home", str(home), *args], capture_output=True, text=True, timeout=300)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def test_up_is_idempotent_status_reports_a_dead_component_and_down_leaves_nothing(tmp_path: Path) -> None:
    home = tmp_path / "env"
    first = _run("up", home=home)
    assert first.returncode == 0, first.stderr
    assert "environment up in" in first.stderr
    state = Environment(home).load_state()
    assert state is not None
    pids = {c["name"]: c["pid"] for c in state["components"]}
    ports = [c["port"] for c in state["components"]]
    try:
        second = _run("up", home=home)
        assert second.returncode == 0 and "already running" in second.stderr
        assert {c["name"]: c["pid"] for c in Environment(home).load_state()["components"]} == pids

        exported = _run("env", home=home).stdout
        for key in ("KUBECONFIG", "MLFLOW_TRACKING_URI", "PROMETHEUS_URL"):
            assert f"export {key}=" in exported
        sourced = subprocess.run(["bash", "-c", f'eval "$({" ".join(CLI)} dev --home {home} env)"; '
                                  'echo "$KUBECONFIG|$MLFLOW_TRACKING_URI"'],
                                 capture_output=True, text=True, timeout=60).stdout.strip()
        assert sourced == f"{state['exports']['KUBECONFIG']}|{state['exports']['MLFLOW_TRACKING_URI']}"

        healthy = _run("status", home=home)
        assert healthy.returncode == 0, healthy.stdout
        os.killpg(pids["prometheus"], signal.SIGKILL)
        broken = _run("status", home=home)
        assert broken.returncode == 1
        assert any(line.startswith("BAD") and "prometheus" in line for line in broken.stdout.splitlines())
    finally:
        down = _run("down", home=home)
    node = state["node"]
    assert node["mode"] == "real"
    # The node's network is gone with it: namespace, veth and the host's routes to its pod and Service ranges.
    assert node["netns"] not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    routes = subprocess.run(["ip", "route"], capture_output=True, text=True).stdout
    assert node["service_cidr"] not in routes and node["pod_cidr"] not in routes, routes
    assert down.returncode == 0, down.stderr
    assert not [name for name, pid in pids.items() if _alive(pid)]
    assert not [p for p in ports if port_bound(p)]
    assert not home.exists()
