"""Every manifest in examples/ is accepted by the real apiserver (server-side dry run, strict fields)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = sorted((REPO / "examples").glob("*.yaml"))


@pytest.mark.parametrize("path", EXAMPLES, ids=[p.name for p in EXAMPLES])
def test_example_is_accepted_by_the_apiserver(path: Path, operator: Any, dev_env: dict[str, Any],
                                              namespace: str) -> None:
    # `operator` only ensures the CRDs are installed; dry-run objects never reach it.
    env = {**os.environ, "KUBECONFIG": dev_env["exports"]["KUBECONFIG"]}
    proc = subprocess.run([dev_env["binaries"]["kubectl"], "apply", "-n", namespace, "--dry-run=server",
                           "--validate=strict", "-f", str(path)], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "(server dry run)" in proc.stdout


def test_there_are_examples() -> None:
    assert len(EXAMPLES) >= 5
