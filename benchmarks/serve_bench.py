#!/usr/bin/env python3
"""Serving benchmark: `modelpilot serve` against `mlflow models serve` and MLServer, in one run.

Fixed scenario, so runs are comparable:
  * model — scikit-learn LogisticRegression on iris, saved locally with MLflow
    (signature + input example), the same directory for every server;
  * load — wrk, 1 thread, 16 connections, 10 s per server (after a 2 s
    warm-up), 1-row JSON requests POSTed by a small Lua script;
  * servers — one server process each, started and stopped in turn:
      modelpilot serve: v2 and /invocations, batching on and off, cache off;
                        plus v2 with the cache on (every request is a repeat,
                        so that row measures the cache, not the model);
      mlflow models serve (from this virtualenv, --env-manager local);
      MLServer + mlserver-mlflow (v2 and /invocations), only if it can be
      installed into ~/.cache/modelpilot/bench-venvs/mlserver, else skipped
      with the reason.

Prints requests/s, p50 and p99 per server and the throughput ratios against
`mlflow models serve` and MLServer. Numbers move with machine load; compare
rows from the same run. Usage:

    .venv/bin/python benchmarks/serve_bench.py [--duration 10] [--connections 16]
        [--skip-mlserver] [--json results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
VENV_BIN = Path(sys.executable).parent
CACHE = Path.home() / ".cache" / "modelpilot"
MLSERVER_VENV = CACHE / "bench-venvs" / "mlserver"
MLSERVER_INSTALL_TIMEOUT = 600
COLUMNS = ["sepal length (cm)", "sepal width (cm)", "petal length (cm)", "petal width (cm)"]
ROW = [5.1, 3.5, 1.4, 0.2]
V2_BODY = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}
# MLServer's MLflow runtime decodes a v2 request into a DataFrame from one tensor per column.
V2_COLUMNS_BODY = {
    "parameters": {"content_type": "pd"},
    "inputs": [{"name": c, "shape": [1], "datatype": "FP64", "data": [v]} for c, v in zip(COLUMNS, ROW)],
}
INVOCATIONS_BODY = {"dataframe_split": {"columns": COLUMNS, "data": [ROW]}}


@dataclass
class Result:
    server: str
    endpoint: str
    requests_per_s: float | None
    p50_ms: float | None
    p99_ms: float | None
    errors: int = 0
    note: str = ""


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 5) -> tuple[int, bytes]:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method, headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return 0, b""


def wait_until(check: Callable[[], bool], proc: subprocess.Popen[bytes], deadline_s: float, what: str) -> None:
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with code {proc.returncode} before it was ready")
        if check():
            return
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready within {deadline_s:.0f} s")


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def start(cmd: list[str], env: dict[str, str] | None, log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    # Own process group, so worker processes a server forks are stopped with it.
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def lua_script(path: Path, body: Any) -> Path:
    payload = json.dumps(body, separators=(",", ":"))
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload)}\n"
        # Count non-2xx answers, so a fast error page never passes for throughput.
        "local bad = 0\n"
        "function response(status, headers, body) if status >= 300 then bad = bad + 1 end end\n"
        "function done(summary, latency, requests) io.write(string.format('non2xx %d\\n', bad)) end\n"
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3}


def _ms(text: str) -> float:
    m = re.match(r"([\d.]+)(us|ms|s)", text)
    if not m:
        raise ValueError(text)
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, duration: int, connections: int) -> tuple[float, float, float, int]:
    # Warm-up (JIT-less Python still has caches, pools and lazy imports to fill).
    subprocess.run(["wrk", "-t1", f"-c{connections}", "-d2s", "-s", str(script), url],
                   capture_output=True, text=True, check=False)
    out = subprocess.run(
        ["wrk", "-t1", f"-c{connections}", f"-d{duration}s", "--latency", "-s", str(script), url],
        capture_output=True, text=True, check=True,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = int(re.search(r"non2xx (\d+)", out).group(1))  # type: ignore[union-attr]
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, p50, p99, non2xx + errors


# --------------------------------------------------------------------------- the model


def save_model(where: Path) -> Path:
    import warnings

    warnings.filterwarnings("ignore")
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    X, y = load_iris(return_X_y=True, as_frame=True)
    clf = LogisticRegression(max_iter=500).fit(X, y)
    path = where / "iris-model"
    mlflow.sklearn.save_model(clf, str(path), input_example=X.head(3), signature=infer_signature(X, clf.predict(X)),
                              pip_requirements=["scikit-learn"])
    return path


# --------------------------------------------------------------------------- servers


def bench_modelpilot(model: Path, work: Path, args: argparse.Namespace) -> list[Result]:
    results = []
    scenarios = [
        ("modelpilot serve (batching on)", {"MODELPILOT_SERVE_BATCHING": "true"}),
        ("modelpilot serve (batching off)", {"MODELPILOT_SERVE_BATCHING": "false"}),
        ("modelpilot serve (cache on, repeated input)", {"MODELPILOT_SERVE_CACHE": "true"}),
    ]
    for label, extra in scenarios:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW"))}
        env.update(extra)
        proc = start([str(VENV_BIN / "modelpilot"), "serve", "--model-uri", str(model), "--host", "127.0.0.1",
                      "--port", str(port), "--model-name", "iris", "--log-level", "warning"],
                     env, work / f"modelpilot-{port}.log")
        base = f"http://127.0.0.1:{port}"
        try:
            wait_until(lambda: http("GET", base + "/v2/health/ready")[0] == 200, proc, 120, label)
            endpoints = [("v2", "/v2/models/iris/infer", V2_BODY)]
            if "cache" not in label:
                endpoints.append(("/invocations", "/invocations", INVOCATIONS_BODY))
            for endpoint, path, body in endpoints:
                status, text = http("POST", base + path, body)
                assert status == 200, (label, endpoint, status, text)
                script = lua_script(work / f"mp-{port}-{endpoint.strip('/')}.lua", body)
                rps, p50, p99, errors = run_wrk(base + path, script, args.duration, args.connections)
                results.append(Result(label, endpoint, rps, p50, p99, errors))
                print(f"  {label:44} {endpoint:13} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
        finally:
            stop(proc)
    return results


def bench_mlflow(model: Path, work: Path, args: argparse.Namespace) -> list[Result]:
    label = "mlflow models serve"
    mlflow_exe = VENV_BIN / "mlflow"
    if not mlflow_exe.exists():
        return [Result(label, "/invocations", None, None, None, note=f"skipped: {mlflow_exe} not found")]
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW"))}
    # It execs `uvicorn` by name: this virtualenv's bin must come first on PATH.
    env["PATH"] = f"{VENV_BIN}{os.pathsep}{env.get('PATH', '')}"
    proc = start([str(mlflow_exe), "models", "serve", "-m", str(model), "--env-manager", "local", "-h", "127.0.0.1",
                  "-p", str(port), "-w", "1"], env, work / "mlflow.log")
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: http("GET", base + "/ping")[0] == 200, proc, 180, label)
        status, text = http("POST", base + "/invocations", INVOCATIONS_BODY)
        assert status == 200, (status, text)
        script = lua_script(work / "mlflow.lua", INVOCATIONS_BODY)
        rps, p50, p99, errors = run_wrk(base + "/invocations", script, args.duration, args.connections)
        print(f"  {label:44} {'/invocations':13} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
        return [Result(label, "/invocations", rps, p50, p99, errors)]
    except (RuntimeError, AssertionError) as exc:
        tail = (work / "mlflow.log").read_text(errors="replace").strip().splitlines()[-1:]
        print(f"  {label}: failed ({exc}; {' '.join(tail)})", flush=True)
        return [Result(label, "/invocations", None, None, None, note=f"failed: {exc}")]
    finally:
        stop(proc)


def ensure_mlserver() -> tuple[Path | None, str]:
    exe = MLSERVER_VENV / "bin" / "mlserver"
    if exe.exists():
        return exe, ""
    if shutil.which("python3.11") is None and sys.version_info[:2] != (3, 11):
        return None, "no Python 3.11 to build its virtualenv"
    try:
        MLSERVER_VENV.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([sys.executable, "-m", "venv", "--clear", str(MLSERVER_VENV)], check=True, capture_output=True,
                       timeout=120)
        import sklearn
        import skops

        subprocess.run(
            [str(MLSERVER_VENV / "bin" / "pip"), "install", "-q", "mlserver", "mlserver-mlflow",
             f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}"],
            check=True, capture_output=True, text=True, timeout=MLSERVER_INSTALL_TIMEOUT,
        )
    except subprocess.TimeoutExpired:
        return None, f"pip install mlserver mlserver-mlflow took longer than {MLSERVER_INSTALL_TIMEOUT} s"
    except subprocess.CalledProcessError as exc:
        tail = (exc.stderr or "").strip().splitlines()[-1:] if isinstance(exc.stderr, str) else []
        return None, f"pip install mlserver mlserver-mlflow failed: {' '.join(tail) or exc}"
    return (exe, "") if exe.exists() else (None, "mlserver executable missing after install")


def bench_mlserver(model: Path, work: Path, args: argparse.Namespace) -> list[Result]:
    label = "MLServer + mlserver-mlflow"
    if args.skip_mlserver:
        return [Result(label, "v2", None, None, None, note="skipped: --skip-mlserver")]
    exe, why = ensure_mlserver()
    if exe is None:
        print(f"  {label}: skipped ({why})", flush=True)
        return [Result(label, "v2", None, None, None, note=f"skipped: {why}")]
    version = subprocess.run([str(exe), "--version"], capture_output=True, text=True).stdout.strip().split()[-1:]
    label = f"MLServer {version[0] if version else ''} + mlserver-mlflow".replace("  ", " ")
    models = work / "mlserver-models"
    (models / "iris").mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (models / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "host": "127.0.0.1", "parallel_workers": 0, "debug": False,
    }))
    (models / "iris" / "model-settings.json").write_text(json.dumps({
        "name": "iris", "implementation": "mlserver_mlflow.MLflowRuntime", "parameters": {"uri": str(model)},
    }))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MODEL", "MLFLOW", "VIRTUAL_ENV"))}
    proc = start([str(exe), "start", str(models)], env, work / "mlserver.log", cwd=models)
    base = f"http://127.0.0.1:{http_port}"
    results = []
    try:
        wait_until(lambda: http("GET", base + "/v2/models/iris/ready")[0] == 200, proc, 240, label)
        for endpoint, path, body in (("v2", "/v2/models/iris/infer", V2_COLUMNS_BODY),
                                     ("/invocations", "/invocations", INVOCATIONS_BODY)):
            status, text = http("POST", base + path, body)
            if status != 200:
                results.append(Result(label, endpoint, None, None, None, note=f"answered {status}: {text[:120]!r}"))
                continue
            script = lua_script(work / f"mlserver-{endpoint.strip('/')}.lua", body)
            rps, p50, p99, errors = run_wrk(base + path, script, args.duration, args.connections)
            results.append(Result(label, endpoint, rps, p50, p99, errors))
            print(f"  {label:44} {endpoint:13} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms", flush=True)
    except (RuntimeError, AssertionError) as exc:
        tail = (work / "mlserver.log").read_text(errors="replace").strip().splitlines()[-1:]
        print(f"  {label}: failed ({exc}; {' '.join(tail)})", flush=True)
        results.append(Result(label, "v2", None, None, None, note=f"failed: {exc}"))
    finally:
        stop(proc)
    return results


# --------------------------------------------------------------------------- report


def table(results: list[Result]) -> str:
    def best(prefix: str) -> float | None:
        values = [r.requests_per_s for r in results if r.server.startswith(prefix) and r.requests_per_s]
        return max(values) if values else None

    mlflow_rps = best("mlflow models serve")
    mlserver_rps = best("MLServer")
    lines = [
        "| server | endpoint | requests/s | p50 ms | p99 ms | non-2xx/errors | × mlflow | × MLServer |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        if r.requests_per_s is None:
            lines.append(f"| {r.server} | {r.endpoint} | – | – | – | – | – | – |  {r.note}")
            continue
        x_mlflow = f"{r.requests_per_s / mlflow_rps:.1f}" if mlflow_rps else "–"
        x_mlserver = f"{r.requests_per_s / mlserver_rps:.1f}" if mlserver_rps else "–"
        lines.append(
            f"| {r.server} | {r.endpoint} | {r.requests_per_s:,.0f} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.errors} "
            f"| {x_mlflow} | {x_mlserver} |"
        )
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--duration", type=int, default=10, help="seconds of load per server (default 10)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--skip-mlserver", action="store_true", help="do not install or run MLServer")
    p.add_argument("--only", choices=["modelpilot", "mlflow", "mlserver"], action="append",
                   help="run only these servers (repeatable)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2

    with tempfile.TemporaryDirectory(prefix="modelpilot-bench-") as tmp:
        work = Path(tmp)
        model = save_model(work)
        print(f"model: {model}\nload: wrk -t1 -c{args.connections} -d{args.duration}s, 1-row requests\n", flush=True)
        results: list[Result] = []
        only = set(args.only or ["modelpilot", "mlflow", "mlserver"])
        if "modelpilot" in only:
            results += bench_modelpilot(model, work, args)
        if "mlflow" in only:
            results += bench_mlflow(model, work, args)
        if "mlserver" in only:
            results += bench_mlserver(model, work, args)

    info = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} · {platform.node()} · "
            f"{os.cpu_count()} CPUs · {platform.processor() or platform.machine()} · "
            f"Python {platform.python_version()} · load average {os.getloadavg()[0]:.1f} at the end")
    print()
    print(info)
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps({"info": info, "results": [asdict(r) for r in results]}, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
