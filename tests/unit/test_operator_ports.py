"""The operator's own ports: configurable, and a port that cannot be listened on is one clear line.

Each case runs ``modelpilot operator`` as a subprocess (what a user or the chart runs) with a port that
this test holds open; the ports are checked before the operator connects anywhere, so no cluster is needed.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from collections.abc import Iterator

import pytest

from modelpilot.operator.settings import OperatorSettings, SettingsError


@pytest.fixture
def taken() -> Iterator[int]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        yield int(sock.getsockname()[1])


def _operator(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("MODELPILOT_")}
    environ.update({"MODELPILOT_BIND_ADDRESS": "127.0.0.1", "KUBECONFIG": os.devnull, **env})
    return subprocess.run([sys.executable, "-m", "modelpilot.cli", "operator", *args], env=environ,
                          capture_output=True, text=True, timeout=60)


def _one_clear_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert lines[0].startswith("error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]


def test_a_taken_metrics_port_names_the_variable_and_the_port(taken: int) -> None:
    proc = _operator(MODELPILOT_METRICS_PORT=str(taken), MODELPILOT_LIVENESS_PORT="0")
    _one_clear_line(proc, f"MODELPILOT_METRICS_PORT={taken}", f"127.0.0.1:{taken}", "Address already in use")


def test_a_taken_liveness_port_names_the_variable_and_the_port(taken: int) -> None:
    proc = _operator(MODELPILOT_METRICS_PORT="0", MODELPILOT_LIVENESS_PORT=str(taken))
    _one_clear_line(proc, f"MODELPILOT_LIVENESS_PORT={taken}", f"127.0.0.1:{taken}", "Address already in use")


def test_a_taken_liveness_flag_port_names_the_flag(taken: int) -> None:
    url = f"http://127.0.0.1:{taken}/healthz"
    proc = _operator("--liveness", url, MODELPILOT_METRICS_PORT="0")
    _one_clear_line(proc, f"--liveness {url}", f"127.0.0.1:{taken}")


def test_a_liveness_flag_without_a_port_is_refused() -> None:
    proc = _operator("--liveness", "http://0.0.0.0/healthz", MODELPILOT_METRICS_PORT="0")
    _one_clear_line(proc, "--liveness", "with a host and a port")


def test_port_settings_are_validated() -> None:
    settings = OperatorSettings.from_env({"MODELPILOT_METRICS_PORT": "9100", "MODELPILOT_LIVENESS_PORT": "0"})
    assert (settings.endpoints.metrics_port, settings.endpoints.liveness_port) == (9100, 0)
    assert OperatorSettings.from_env({}).endpoints.liveness_port == 8082
    with pytest.raises(SettingsError, match="MODELPILOT_LIVENESS_PORT='70000' must be a port number"):
        OperatorSettings.from_env({"MODELPILOT_LIVENESS_PORT": "70000"})
    with pytest.raises(SettingsError, match="MODELPILOT_METRICS_PORT='8080.5'"):
        OperatorSettings.from_env({"MODELPILOT_METRICS_PORT": "8080.5"})
