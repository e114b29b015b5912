"""The local environment (devenv/modelpilot_dev) stays out of the product and out of both images.

It is its own distribution (devenv/pyproject.toml, installed editable by scripts/bootstrap.sh);
the product distribution packages operator/ and serving-image/ only, the Dockerfiles copy only
those (and .dockerignore leaves devenv/ out of the context), and `modelpilot dev` / `modelpilot
demo` reach it by name only when they run. import-linter forbids the static imports
(pyproject.toml); the image install steps are proven in test_operator_image / test_serve_image.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILES = (ROOT / "operator" / "Dockerfile", ROOT / "serving-image" / "Dockerfile")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.parent.name)
def test_the_images_copy_only_the_product(dockerfile: Path) -> None:
    copies = [line.split()[1:] for line in dockerfile.read_text().splitlines() if line.startswith("COPY ")]
    sources = {src for args in copies if not args[0].startswith("--from=") for src in args[:-1]}
    assert sources <= {"pyproject.toml", "README.md", "operator", "serving-image",
                       "operator/requirements.txt", "serving-image/requirements.txt"}, sources


def test_the_build_context_leaves_the_local_environment_out() -> None:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()]
    assert "devenv" in patterns


def test_the_product_distribution_does_not_package_the_local_environment() -> None:
    finder = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]["find"]
    assert set(finder["where"]) == {"operator", "serving-image"}
    assert not (ROOT / "operator" / "modelpilot" / "dev").exists()
    dev = tomllib.loads((ROOT / "devenv" / "pyproject.toml").read_text())
    assert dev["project"]["name"] == "modelpilot-dev"
    assert dev["project"]["scripts"] == {"modelpilot-dev": "modelpilot_dev.cli:main"}
    # Never resolved from an index (the name is not published): bootstrap installs both from the checkout.
    assert not any(d.split("[")[0].strip().lower() == "modelpilot" for d in dev["project"]["dependencies"])


def test_a_product_wheel_holds_no_local_environment(tmp_path: Path) -> None:
    # A copy of the checkout's sources, devenv/ included (so the packaging itself must leave it out);
    # built there, so no build/ directory of the working tree (stale or not) takes part or changes.
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info", "build")
    for name in ("operator", "serving-image", "devenv"):
        shutil.copytree(ROOT / name, src / name, ignore=ignore)
    wheels = tmp_path / "wheels"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                           "-w", str(wheels), str(src)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (wheel,) = wheels.glob("modelpilot-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert any(n.startswith("modelpilot/operator/") for n in names)
    assert any(n.startswith("modelpilot_serve/") for n in names)
    assert not any(n.startswith("modelpilot_dev") or n.startswith("modelpilot/dev/") for n in names)


def test_modelpilot_dev_says_what_is_missing_where_it_is_not_installed(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from modelpilot import cli

    for name in [m for m in sys.modules if m == "modelpilot_dev" or m.startswith("modelpilot_dev.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "modelpilot_dev", None)  # as in an image: not importable
    for argv in (["dev", "status"], ["demo"]):
        assert cli.main(argv) == 2
        assert "not part of the modelpilot product" in capsys.readouterr().err


def test_modelpilot_dev_and_demo_hand_over_to_modelpilot_dev(capsys: pytest.CaptureFixture[str]) -> None:
    from modelpilot import cli

    for argv, usage in ((["dev", "--help"], "usage: modelpilot dev"), (["demo", "--help"], "usage: modelpilot demo")):
        with pytest.raises(SystemExit) as exit_:
            cli.main(argv)
        assert exit_.value.code == 0
        assert capsys.readouterr().out.startswith(usage)
