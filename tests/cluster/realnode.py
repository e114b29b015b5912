"""Helpers shared by the real node's cluster tests (``test_real_node``, ``test_gateway``): kubectl against the
environment, and Python run inside the node's network namespace, where kube-proxy programs the ClusterIPs."""

from __future__ import annotations

import subprocess
import sys
from typing import Any


def kubectl(env: dict[str, Any], *args: str, input: str | None = None, check: bool = True,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """``kubectl --kubeconfig <the environment's> *args``; asserts success unless ``check`` is false."""
    proc = subprocess.run([env["binaries"]["kubectl"], "--kubeconfig", env["exports"]["KUBECONFIG"], *args],
                          input=input, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}"
    return proc


def in_node(env: dict[str, Any], code: str, timeout: float = 120) -> str:
    """Run Python ``code`` inside the node's network namespace; its stdout."""
    proc = subprocess.run(["ip", "netns", "exec", env["node"]["netns"], sys.executable, "-c", code],
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"inside the node's network namespace: {proc.stderr.strip()[-2000:]}"
    return proc.stdout
