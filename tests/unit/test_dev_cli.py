"""`modelpilot dev` hints name the environment they were printed for.

A new user ran `modelpilot dev up --home X` (refused: `--home` was only
accepted before the subcommand) and then got `eval "$(modelpilot dev env)"`,
which reads the default home, not X. Every hint now carries `--home` when the
home is not the default one, and every subcommand accepts it after its name.
The hints are checked by running them: their arguments go back into the CLI.
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from modelpilot_dev import cli
from modelpilot_dev.environment import Environment


def _state(home: Path) -> dict[str, object]:
    """The part of `state.json` that `env` and the summary read (what `up` writes)."""
    exports = {"KUBECONFIG": str(home / "kubeconfig"), "MLFLOW_TRACKING_URI": "http://127.0.0.1:5000",
               "PROMETHEUS_URL": "http://127.0.0.1:9090", "MODELPILOT_DEV_HOME": str(home)}
    return {"home": str(home), "ports": {"apiserver": 6443}, "exports": exports, "components": []}


def _hint(out: str, prefix: str) -> list[str]:
    """The `modelpilot dev …` command in a printed line, as argv after `modelpilot dev`."""
    line = next(line for line in out.splitlines() if prefix in line)
    command = line.split('eval "$(', 1)[1].split(')"', 1)[0] if 'eval "$(' in line else line.split("`")[1]
    argv = shlex.split(command)
    assert argv[:2] == ["modelpilot", "dev"], argv
    return argv[2:]


@pytest.mark.parametrize("argv", [["up", "--home", "/x y"], ["--home", "/x y", "up"], ["--home", "/z", "up", "--home", "/x y"]])
def test_home_is_accepted_before_and_after_every_subcommand(argv: list[str]) -> None:
    assert cli.parser().parse_args(argv).home == "/x y"
    for sub in ("status", "down", "env", "build", "demo"):
        assert cli.parser().parse_args([sub, "--home", "/h"]).home == "/h"
    assert cli.parser().parse_args(["env"]).home is None


def test_the_summary_and_status_hints_reach_a_non_default_home(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELPILOT_DEV_HOME", str(tmp_path / "default"))
    home = tmp_path / "my env"  # a space: the hint must quote it
    home.mkdir()

    # No environment there yet: status says how to start one *there*.
    assert cli.main(["status", "--home", str(home)]) == 1
    up = _hint(capsys.readouterr().out, "no environment")
    assert cli.parser().parse_args(up).dev_command == "up" and Path(cli.parser().parse_args(up).home) == home
    assert cli.main(["env", "--home", str(home)]) == 1
    assert _hint(capsys.readouterr().err, "no environment") == up

    # After `up`: the printed eval line, run, prints this environment's exports.
    state = _state(home)
    (home / "state.json").write_text(json.dumps(state))
    cli._print_summary(Environment(home), state)
    env_argv = _hint(capsys.readouterr().out, "use it with")
    assert cli.main(env_argv) == 0
    assert f"export MODELPILOT_DEV_HOME='{home}'" in capsys.readouterr().out


def test_hints_for_the_default_home_stay_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("MODELPILOT_DEV_HOME", str(tmp_path))
    state = _state(tmp_path)
    cli._print_summary(Environment(None), state)
    assert 'eval "$(modelpilot dev env)"' in capsys.readouterr().out
    assert Environment(tmp_path).command("down") == "modelpilot dev down"


def test_down_stops_a_kwok_environment_without_touching_any_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """`dev down` of a `--node kwok` environment (the operator benchmark's) raised KeyError: 'ident' — it took
    the node entry for a real node's network — and left its home behind. A real node's network is torn down;
    a kwok environment has none to tear down."""
    from modelpilot_dev import node as realnode

    torn: list[object] = []
    monkeypatch.setattr(realnode, "teardown_network", lambda net: torn.append(net) or [])
    home = tmp_path / "kwok-env"
    home.mkdir()
    (home / "state.json").write_text(json.dumps({**_state(home), "node": {"mode": "kwok"}}))
    Environment(home=home, progress=lambda _: None).down()
    assert torn == [] and not home.exists()
    home.mkdir()
    real = {"mode": "real", "ident": "abcd1234", "index": 1}
    (home / "state.json").write_text(json.dumps({**_state(home), "node": real}))
    Environment(home=home, progress=lambda _: None).down()
    assert torn == [real] and not home.exists()
