"""The models the demo, the e2e suite and the cluster tests register: their requirements are the serving image's.

A model logged without explicit requirements got MLflow's inference in the
dev venv (psutil, pytest, rich, …), so each serving pod warned about packages
it lacks. Each helper is run here against a real MLflow tracking store (SQLite
and local artifacts in a temporary directory, no server), and the logged
`requirements.txt` must name only packages the serving image installs, at
the versions it installs.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from modelpilot_dev import workloads

ROOT = Path(__file__).resolve().parents[2]
# What the model's requirement names mean in the image: MLflow's own line is met by mlflow-skinny.
EQUIVALENT = {"mlflow": "mlflow-skinny"}


def _image_pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for line in (ROOT / "serving-image" / "requirements.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            pins[name.lower()] = version
    return pins


def _requirements(tracking: str, name: str, version: str) -> dict[str, str]:
    import mlflow.artifacts

    where = mlflow.artifacts.download_artifacts(f"models:/{name}/{version}", tracking_uri=tracking)
    out: dict[str, str] = {}
    for line in (Path(where) / "requirements.txt").read_text().splitlines():
        if line.strip():
            match = re.fullmatch(r"([A-Za-z0-9_.\-]+)==(\S+)", line.strip())
            assert match, f"not a pinned requirement: {line!r}"
            out[match[1].lower()] = match[2]
    return out


@pytest.fixture
def tracking(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    import mlflow

    # A local store puts new experiments' artifacts under the working directory: keep them in tmp_path.
    monkeypatch.chdir(tmp_path)
    previous = mlflow.get_tracking_uri()
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    # mlflow.set_tracking_uri also sets this variable for child processes: restored (or removed) afterwards, or
    # a later test's operator settings read a tracking URI that is not http(s).
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    yield uri
    mlflow.set_tracking_uri(previous)


def test_registered_models_require_only_what_the_serving_image_installs(tracking: str) -> None:
    image = _image_pins()
    cases = {
        "iris": (workloads.register_iris_model(tracking, "iris"), {"mlflow", "scikit-learn", "skops", "pandas",
                                                                   "numpy"}),
        "faulty": (workloads.register_faulty_model(tracking, "faulty"), {"mlflow", "pandas"}),
        "crashing": (workloads.register_faulty_model(tracking, "crashing", asset="crashing_model.py"),
                     {"mlflow", "pandas"}),
    }
    for name, (version, expected) in cases.items():
        requirements = _requirements(tracking, name, version)
        assert set(requirements) == expected, (name, requirements)
        for package, pinned in requirements.items():
            in_image = EQUIVALENT.get(package, package)
            assert image.get(in_image) == pinned, f"{name}: {package}=={pinned}, the image has {in_image}=={image.get(in_image)}"
