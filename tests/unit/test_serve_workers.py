"""`modelpilot serve --workers N`: worker processes sharing one port, /metrics merged across them.

One real supervisor process with two spawned workers (a subprocess, real
HTTP), plus the settings error for an out-of-range worker count.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest

from modelpilot_serve.cli import main as serve_main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _requests_200(text: str) -> float:
    from prometheus_client.parser import text_string_to_metric_families

    return sum(
        s.value
        for fam in text_string_to_metric_families(text)
        for s in fam.samples
        if s.name == "modelpilot_requests_total" and s.labels.get("code") == "200"
    )


def test_two_workers_share_the_port_and_merge_metrics(serve_iris_model: Any, serve_helpers: Any, tmp_path: Path) -> None:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW", "PROMETHEUS"))}
    env["TMPDIR"] = str(tmpdir)
    proc = subprocess.Popen(
        [sys.executable, "-m", "modelpilot_serve", "serve", "--model-uri", str(serve_iris_model.path),
         "--model-name", "iris", "--host", "127.0.0.1", "--port", str(port), "--workers", "2"],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    stderr_lines: list[str] = []
    reader = threading.Thread(target=lambda: stderr_lines.extend(proc.stderr or []), daemon=True)
    reader.start()
    body = serve_helpers.v2_body(serve_iris_model.X.head(1).to_numpy())
    pids: set[str] = set()
    ok = 0
    lock = threading.Lock()

    def predict(client: httpx.Client) -> int:
        nonlocal ok
        r = client.post(f"{url}/v2/models/iris/infer", json=body, headers={"connection": "close"})
        if r.status_code == 200:
            with lock:
                ok += 1
                pids.add(r.headers["x-modelpilot-worker"])
        return r.status_code

    try:
        with httpx.Client(timeout=10) as client:
            def warm() -> bool:
                assert proc.poll() is None, "".join(stderr_lines)
                try:
                    predict(client)
                except httpx.TransportError:
                    return False
                return len(pids) == 2  # both workers loaded their model and answered

            serve_poll = serve_helpers.poll
            serve_poll(warm, deadline_s=120, interval=0.05)
            assert len(list(tmpdir.glob("modelpilot-metrics-*"))) == 1
            with ThreadPoolExecutor(8) as pool:
                codes = list(pool.map(lambda _: predict(client), range(40)))
            assert codes == [200] * 40
            assert str(proc.pid) not in pids  # the supervisor itself serves nothing
            # Whichever worker answers the scrape, it reports every worker's requests.
            sums = [_requests_200(client.get(f"{url}/metrics", headers={"connection": "close"}).text)
                    for _ in range(6)]
            assert sums == [ok] * 6, (sums, ok)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, "".join(stderr_lines)
    assert list(tmpdir.glob("modelpilot-metrics-*")) == []
    events = [json.loads(line).get("event") for line in stderr_lines if line.startswith("{")]
    assert "starting" in events and "stopped" in events


@pytest.mark.parametrize("how", ["flag", "env"])
def test_workers_out_of_range_exits_2(how: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODEL_URI", "/nowhere")
    if how == "flag":
        assert serve_main(["--workers", "0"]) == 2
    else:
        monkeypatch.setenv("MODELPILOT_SERVE_WORKERS", "65")
        assert serve_main([]) == 2
    err = capsys.readouterr().err
    assert "MODELPILOT_SERVE_WORKERS" in err and "--workers" in err
    assert "between 1 and 64" in err
