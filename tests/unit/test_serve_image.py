"""The serving image's install steps, proven without Docker.

serving-image/Dockerfile installs serving-image/requirements.txt into a
virtualenv, then the project with --no-deps. This test does exactly that in a
fresh virtualenv (pip's download cache keeps repeat runs fast), checks that
the operator's dependencies are absent, and serves a saved model with the
virtualenv's own `modelpilot serve`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _run(*cmd: str | Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


def test_dockerfile_follows_the_image_rules() -> None:
    text = (ROOT / "serving-image" / "Dockerfile").read_text()
    lines = [line.strip() for line in text.splitlines() if line.strip() and not line.strip().startswith("#")]
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) >= 2, "multi-stage"
    image = next(line.split("=", 1)[1] for line in lines if line.startswith("ARG PYTHON_IMAGE="))
    assert image.startswith("python:3.11") and "slim" in image and image != "python:3.11-slim", "pinned slim tag"
    assert "USER 10001:10001" in lines
    assert 'ENTRYPOINT ["modelpilot"]' in lines and 'CMD ["serve"]' in lines and "EXPOSE 8080 8081" in lines
    assert any("pip install -r /src/serving-image/requirements.txt" in line for line in lines)
    assert any("pip install --no-deps /src" in line for line in lines)
    requirements = [
        line.split("==", 1)[0].strip().lower()
        for line in (ROOT / "serving-image" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.strip().startswith("#")
    ]
    for forbidden in ("kopf", "kubernetes", "mlflow"):  # mlflow-skinny, not the full server
        assert forbidden not in requirements


def test_fresh_virtualenv_from_requirements_serves_a_model(
    tmp_path: Path, serve_iris_model: Any, serve_helpers: Any
) -> None:
    # The build context the Dockerfile copies, and nothing else (keeps build
    # artefacts out of the working tree).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in ("operator", "serving-image"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)

    venv = tmp_path / "venv"
    _run(sys.executable, "-m", "venv", venv, timeout=120)
    py = venv / "bin" / "python"
    # --no-compile: byte-compiling thousands of files is most of an install from cache.
    pip = (py, "-m", "pip", "install", "--disable-pip-version-check", "--no-compile", "-q")
    _run(*pip, "-r", src / "serving-image" / "requirements.txt")
    _run(*pip, "--no-deps", src)

    for forbidden in ("kopf", "kubernetes", "mlflow.server", "modelpilot_dev"):
        probe = subprocess.run([str(py), "-c", f"import {forbidden}"], capture_output=True, text=True, timeout=120)
        assert probe.returncode != 0, f"{forbidden} must not be installed in the serving image"
    _run(py, "-c", "import modelpilot_serve.app, uvloop, httptools, redis", timeout=120)

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW", "VIRTUAL_ENV", "PYTHON"))}
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        [str(venv / "bin" / "modelpilot"), "serve", "--model-uri", str(serve_iris_model.path),
         "--host", "127.0.0.1", "--port", str(port), "--model-name", "iris"],
        env=env, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        def ready() -> bool:
            assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
            try:
                return httpx.get(url + "/v2/health/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        serve_helpers.poll(ready, deadline_s=120, interval=0.1)
        rows = serve_iris_model.X.iloc[[0, 60, 120]]
        resp = httpx.post(url + "/v2/models/iris/infer", json=serve_helpers.v2_body(rows.to_numpy()), timeout=10)
        assert resp.status_code == 200, resp.text
        assert resp.json()["outputs"][0]["data"] == serve_iris_model.estimator.predict(rows).tolist() == [0, 1, 2]
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        assert proc.returncode == 0, stderr
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("extra", ["serve"])
def test_serve_extra_matches_requirements(extra: str) -> None:
    """Every distribution in requirements.txt is in the `serve` extra (the image and `pip install .[serve]` agree)."""
    import re
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = {re.split(r"[<>=!\[ ;]", r, maxsplit=1)[0].lower().replace("_", "-")
                for r in project["optional-dependencies"][extra]}
    pinned = {
        line.split("==", 1)[0].strip().lower().replace("_", "-")
        for line in (ROOT / "serving-image" / "requirements.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    # uvicorn[standard] in the extra brings uvloop and httptools; scipy comes with scikit-learn.
    implied = {"uvloop", "httptools", "scipy"}
    assert pinned - implied <= declared, sorted(pinned - implied - declared)
