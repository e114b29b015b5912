"""The operator image's install steps, proven without Docker.

operator/Dockerfile installs operator/requirements.txt into a virtualenv, then
the project with --no-deps. This test does exactly that in a fresh virtualenv
(pip's download cache keeps repeat runs fast), checks that nothing of the
serving stack came along, and runs the operator's entry point from it.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str | Path, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=900, env=env)
    if check:
        assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dockerfile_follows_the_image_rules() -> None:
    text = (ROOT / "operator" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    assert len([line for line in lines if line.startswith("FROM ")]) >= 2, "multi-stage"
    image = next(line.split("=", 1)[1] for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert image.startswith("python:3.11") and "slim" in image and image != "python:3.11-slim", "pinned slim tag"
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["modelpilot"]' in lines and 'CMD ["operator"]' in lines
    assert "RUN pip install -r /src/operator/requirements.txt" in lines
    requirements = (ROOT / "operator" / "requirements.txt").read_text()
    pinned = [r for r in requirements.splitlines() if r and not r.startswith("#")]
    assert all("==" in r for r in pinned)
    assert not any(r.lower().startswith(("mlflow", "scikit-learn", "uvicorn", "starlette")) for r in pinned)


def test_the_image_install_steps_run_the_operator_without_the_serving_stack(tmp_path: Path) -> None:
    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv)
    py = venv / "bin" / "python"
    _run(py, "-m", "pip", "install", "-q", "-r", ROOT / "operator" / "requirements.txt")
    _run(py, "-m", "pip", "install", "-q", "--no-deps", ROOT)
    _run(py, "-c", "import modelpilot.operator.handlers, modelpilot.operator.run, modelpilot.operator.api")
    for absent in ("sklearn", "mlflow", "uvicorn"):
        assert _run(py, "-c", f"import {absent}", check=False).returncode != 0, f"{absent} must not be installed"
    # The local environment is its own distribution (devenv/): never in the product, never in an image.
    assert _run(py, "-c", "import modelpilot_dev", check=False).returncode != 0, "modelpilot_dev must not be installed"
    dev = _run(venv / "bin" / "modelpilot", "dev", "up", check=False)
    assert dev.returncode == 2 and "not part of the modelpilot product" in dev.stderr, dev.stderr
    helped = _run(venv / "bin" / "modelpilot", "operator", "--help")
    assert "--liveness" in helped.stdout
    # Settings are validated before anything connects: a bad value stops it, naming the variable.
    bad = _run(venv / "bin" / "modelpilot", "operator", check=False,
               env={"PATH": str(venv / "bin"), "MODELPILOT_MLFLOW_TRACKING_URI": "file:///mlruns"})
    assert bad.returncode == 2 and "MODELPILOT_MLFLOW_TRACKING_URI" in bad.stderr
