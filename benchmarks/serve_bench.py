#!/usr/bin/env python3
"""Serving benchmark: `modelpilot serve` against `mlflow models serve`, MLServer and an empty app, per zoo model.

Fixed scenario, so runs are comparable:
  * models — the model zoo's first four kinds (`tests/zoo.py`): sklearn_frame,
    sklearn_numpy, pipeline_strings, xgboost; each trained and saved by MLflow
    once per run, the same directory for every server;
  * load — wrk, 1 thread, 16 connections, 10 s per endpoint after a 2 s
    warm-up, 1-row JSON POSTs from a Lua script that also counts non-2xx
    answers (a fast error page never passes for throughput);
  * servers — one process each, started and stopped in turn, per kind:
      an empty ASGI app under uvicorn (uvloop + httptools): the ceiling;
      modelpilot serve, defaults (batching on, cache off): v2 (one tensor per
        column for column models, one [1, n] FP64 matrix for tensor models)
        and /invocations; for sklearn_frame also v2 with the cache on, every
        request a repeat (measures the cache, not the model);
      mlflow models serve --env-manager local -w 1, from this virtualenv;
      MLServer + mlserver-mlflow (parallel_workers 0), v2 with the same body
        as modelpilot's and /invocations, installed on first use into
        ~/.cache/modelpilot/bench-venvs/mlserver ($MODELPILOT_CACHE moves it).
Before the load, every endpoint's answer to the request is compared with
MLflow's own pyfunc prediction; a wrong answer is noted in the row.

Prints one table per kind (requests/s, p50, p99, errors and the ratios
modelpilot ÷ mlflow, ÷ MLServer, ÷ ceiling) and one line per kind telling
whether issue 11's targets are met. Asserts nothing. Numbers move with machine
load (the load average at start and end is printed and kept in --json);
compare rows from the same run. Usage:

    .venv/bin/python benchmarks/serve_bench.py [--kinds sklearn_frame,xgboost] [--duration 10]
        [--connections 16] [--skip-mlserver] [--only modelpilot ...] [--json results.json]
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import importlib.metadata
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
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(ROOT / "tests"))

import zoo  # noqa: E402  (tests/zoo.py: the models the serving tests prove correct)

VENV_BIN = Path(sys.executable).parent
CACHE = Path(os.environ.get("MODELPILOT_CACHE") or Path.home() / ".cache" / "modelpilot").expanduser()
MLSERVER_VENV = CACHE / "bench-venvs" / "mlserver"
MLSERVER_VERSION = "1.7.1"  # mlserver and mlserver-mlflow; both need Python 3.9–3.12
MLSERVER_INSTALL_TIMEOUT = 900

BENCH_KINDS = zoo.KINDS[:4]  # sklearn_frame, sklearn_numpy, pipeline_strings, xgboost
NUMERIC_KINDS = {"sklearn_frame", "sklearn_numpy", "xgboost"}
CACHE_KIND = "sklearn_frame"  # the cache-on scenario runs on this kind only

# Issue 11's targets, per kind, for modelpilot serve with its defaults.
TARGET_X_MLFLOW = 8.0
TARGET_X_MLSERVER = 6.0
TARGET_CEILING_SHARE = 0.25

MODELPILOT = "modelpilot serve"
MODELPILOT_CACHED = "modelpilot serve, cache on (every request a repeat)"
MLFLOW = "mlflow models serve"
MLSERVER = "MLServer + mlserver-mlflow"
CEILING = "empty ASGI app (uvicorn, uvloop + httptools)"


@dataclass
class Result:
    kind: str
    server: str
    endpoint: str
    requests_per_s: float | None = None
    p50_ms: float | None = None
    p99_ms: float | None = None
    errors: int | None = None
    note: str = ""


@dataclass
class Case:
    """One zoo model and the 1-row requests every server gets for it."""

    kind: str
    model: Any  # zoo.ZooModel
    invocations_body: dict[str, Any]
    v2_body: dict[str, Any]
    expected: list[float] = field(default_factory=list)


# --------------------------------------------------------------------------- helpers


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def http(method: str, url: str, body: Any = None, timeout: float = 10) -> tuple[int, bytes]:
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


def start(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> subprocess.Popen[bytes]:
    # Own process group, so whatever a server forks is stopped with it.
    with open(log, "wb") as fh:
        return subprocess.Popen(cmd, env=env, cwd=cwd, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    with contextlib.suppress(ProcessLookupError):  # stragglers of the group (forked workers)
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running(cmd: list[str], env: dict[str, str], log: Path, cwd: Path | None = None) -> Iterator[Any]:
    proc = start(cmd, env, log, cwd)
    try:
        yield proc
    finally:
        stop(proc)


OMP_THREADS: int | None = None  # --omp-threads: OMP_NUM_THREADS for every server alike


def clean_env(**extra: str) -> dict[str, str]:
    """This process's environment without model, MLflow or virtualenv settings that could steer a server."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("MODEL", "MLFLOW", "MLSERVER", "VIRTUAL_ENV", "PYTHONPATH", "UVICORN"))}
    if OMP_THREADS is not None:
        env["OMP_NUM_THREADS"] = str(OMP_THREADS)
    env.update(extra)
    return env


def log_tail(log: Path, lines: int = 1) -> str:
    try:
        text = log.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(line.strip()[:200] for line in text[-lines:])


def lua_script(path: Path, body: Any) -> Path:
    payload = json.dumps(body, separators=(",", ":"))
    assert "]==]" not in payload
    # `response` runs in each wrk thread's own Lua state and `done` in the main one, so the count
    # of non-2xx answers is a global per thread, collected through the thread handles.
    path.write_text(
        'wrk.method = "POST"\n'
        'wrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = [==[{payload}]==]\n"
        "local threads = {}\n"
        "function setup(thread) table.insert(threads, thread) end\n"
        "function init(args) bad = 0 end\n"
        "function response(status, headers, body) if status < 200 or status >= 300 then bad = bad + 1 end end\n"
        "function done(summary, latency, requests)\n"
        "  local n = 0\n"
        "  for _, t in ipairs(threads) do n = n + t:get('bad') end\n"
        "  io.write(string.format('non2xx %d\\n', n))\n"
        "end\n"
    )
    return path


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1e3, "m": 60e3}


def _ms(text: str) -> float:
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if not m:
        raise ValueError(f"unreadable wrk latency {text!r}")
    return float(m.group(1)) * _UNITS[m.group(2)]


def run_wrk(url: str, script: Path, args: argparse.Namespace) -> tuple[float, float, float, int]:
    """requests/s, p50 ms, p99 ms, non-2xx answers + socket errors."""
    base = ["wrk", "-t1", f"-c{args.connections}", "-s", str(script)]
    if args.warmup > 0:  # pools, caches and lazy imports to fill before the measured run
        subprocess.run([*base, f"-d{args.warmup}s", url], capture_output=True, text=True, check=False)
    out = subprocess.run([*base, f"-d{args.duration}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    p50 = _ms(re.search(r"\s50%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    p99 = _ms(re.search(r"\s99%\s+(\S+)", out).group(1))  # type: ignore[union-attr]
    non2xx = int(re.search(r"non2xx (\d+)", out).group(1))  # type: ignore[union-attr]
    # wrk's own count (status > 399) as a cross-check of the script's.
    wrk_status = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    non2xx = max(non2xx, int(wrk_status.group(1)) if wrk_status else 0)
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", out))
    return rps, p50, p99, non2xx + errors


def predictions(endpoint: str, raw: bytes) -> list[float]:
    doc = json.loads(raw)
    data = doc["outputs"][0]["data"] if endpoint == "v2" else doc["predictions"]
    flat: list[float] = []

    def walk(x: Any) -> None:
        if isinstance(x, list):
            for y in x:
                walk(y)
        elif isinstance(x, dict):
            for y in x.values():
                walk(y)
        else:
            flat.append(float(x))

    walk(data)
    return flat


def check_answer(case: Case, endpoint: str, raw: bytes) -> str:
    """'' when the answer matches MLflow's own prediction, else why not."""
    try:
        got = predictions(endpoint, raw)
    except (ValueError, KeyError, IndexError, TypeError) as exc:
        return f"unreadable answer ({type(exc).__name__}: {raw[:80]!r})"
    if len(got) != len(case.expected) or any(abs(a - b) > 1e-6 * max(1.0, abs(b))
                                             for a, b in zip(got, case.expected)):
        return f"wrong answer {got[:4]} (MLflow: {case.expected[:4]})"
    return ""


def measure(case: Case, server: str, endpoint: str, url: str, body: dict[str, Any], work: Path,
            args: argparse.Namespace, check: bool = True) -> Result:
    """Probe the endpoint once (answer checked against MLflow's), then load it with wrk."""
    status, raw = http("POST", url, body)
    if status != 200:
        return Result(case.kind, server, endpoint, note=f"answered {status}: {raw[:160]!r}")
    note = check_answer(case, endpoint, raw) if check else ""
    script = lua_script(work / f"{case.kind}-{free_port()}.lua", body)
    try:
        rps, p50, p99, errors = run_wrk(url, script, args)
    except (subprocess.CalledProcessError, AttributeError, ValueError) as exc:
        return Result(case.kind, server, endpoint, note=f"wrk failed: {exc}")
    result = Result(case.kind, server, endpoint, rps, p50, p99, errors, note)
    print(f"  {server:52} {endpoint:13} {rps:9.0f} req/s  p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  "
          f"errors {errors}{'  ' + note if note else ''}", flush=True)
    return result


def failed(case: Case, server: str, endpoints: list[str], why: str) -> list[Result]:
    print(f"  {server}: {why}", flush=True)
    return [Result(case.kind, server, e, note=why) for e in endpoints]


# --------------------------------------------------------------------------- the models


def build_cases(work: Path, kinds: list[str]) -> list[Case]:
    import numpy as np

    cases = []
    for kind in kinds:
        model = zoo.build(kind, work / "models")
        frame = model.rows.head(1)
        inv = zoo.invocations_bodies(model, frame)
        v2 = zoo.v2_bodies(model, frame)
        invocations_body = inv["inputs"] if model.tensor else inv["dataframe_split"]
        v2_body = v2["matrix"] if model.tensor else v2["columns"]
        expected = np.asarray(model.reference(frame), dtype=np.float64).reshape(-1).tolist()
        cases.append(Case(kind, model, invocations_body, v2_body, expected))
    return cases


# --------------------------------------------------------------------------- servers


def bench_ceiling(case: Case, work: Path, args: argparse.Namespace) -> list[Result]:
    port = free_port()
    log = work / f"ceiling-{case.kind}.log"
    cmd = [sys.executable, "-m", "uvicorn", "ceiling_app:app", "--app-dir", str(BENCH_DIR), "--host", "127.0.0.1",
           "--port", str(port), "--loop", "uvloop", "--http", "httptools", "--no-access-log",
           "--log-level", "warning", "--workers", "1"]
    url = f"http://127.0.0.1:{port}/"
    try:
        with running(cmd, clean_env(), log) as proc:
            wait_until(lambda: http("GET", url)[0] == 200, proc, 60, CEILING)
            return [measure(case, CEILING, "POST /", url, case.invocations_body, work, args, check=False)]
    except RuntimeError as exc:
        return failed(case, CEILING, ["POST /"], f"failed: {exc} ({log_tail(log)})")


def bench_modelpilot(case: Case, work: Path, args: argparse.Namespace) -> list[Result]:
    scenarios: list[tuple[str, list[str], list[str]]] = [(MODELPILOT, [], ["v2", "/invocations"])]
    if case.kind == CACHE_KIND:
        scenarios.append((MODELPILOT_CACHED, ["--cache"], ["v2"]))
    results: list[Result] = []
    for label, flags, endpoints in scenarios:
        port = free_port()
        log = work / f"modelpilot-{case.kind}-{port}.log"
        cmd = [str(VENV_BIN / "modelpilot"), "serve", "--model-uri", str(case.model.path), "--host", "127.0.0.1",
               "--port", str(port), "--grpc-port", str(free_port()), "--model-name", case.kind, *flags]
        base = f"http://127.0.0.1:{port}"
        try:
            with running(cmd, clean_env(), log) as proc:
                wait_until(lambda: http("GET", base + "/v2/health/ready")[0] == 200, proc, 180, label)
                paths = {"v2": (f"/v2/models/{case.kind}/infer", case.v2_body),
                         "/invocations": ("/invocations", case.invocations_body)}
                for endpoint in endpoints:
                    path, body = paths[endpoint]
                    results.append(measure(case, label, endpoint, base + path, body, work, args))
        except RuntimeError as exc:
            results += failed(case, label, endpoints, f"failed: {exc} ({log_tail(log)})")
    return results


def bench_mlflow(case: Case, work: Path, args: argparse.Namespace) -> list[Result]:
    mlflow_exe = VENV_BIN / "mlflow"
    if not mlflow_exe.exists():
        return failed(case, MLFLOW, ["/invocations"], f"skipped: {mlflow_exe} not found")
    port = free_port()
    log = work / f"mlflow-{case.kind}.log"
    # It execs `uvicorn` by name: this virtualenv's bin must come first on PATH.
    env = clean_env(PATH=f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    cmd = [str(mlflow_exe), "models", "serve", "-m", str(case.model.path), "--env-manager", "local",
           "-h", "127.0.0.1", "-p", str(port), "-w", "1"]
    base = f"http://127.0.0.1:{port}"
    try:
        with running(cmd, env, log) as proc:
            wait_until(lambda: http("GET", base + "/ping")[0] == 200, proc, 180, MLFLOW)
            return [measure(case, MLFLOW, "/invocations", base + "/invocations", case.invocations_body, work, args)]
    except RuntimeError as exc:
        return failed(case, MLFLOW, ["/invocations"], f"failed: {exc} ({log_tail(log)})")


def _dist_version(*names: str) -> tuple[str, str] | None:
    for name in names:
        with contextlib.suppress(importlib.metadata.PackageNotFoundError):
            return name, importlib.metadata.version(name)
    return None


def mlserver_requirements() -> tuple[list[str], list[str]]:
    """(preferred, fallback) pip requirements for the MLServer virtualenv.

    Preferred: the same MLflow, scikit-learn, skops, XGBoost, numpy and pandas as this virtualenv, so both
    load the zoo's models with the same code (the sklearn models are saved as skops, the XGBoost one as UBJ).
    Fallback, if that does not resolve: only the model libraries pinned; pip picks an MLflow MLServer accepts.
    """
    base = [f"mlserver=={MLSERVER_VERSION}", f"mlserver-mlflow=={MLSERVER_VERSION}"]
    models = [f"{n}=={v}" for n, v in filter(None, (_dist_version("scikit-learn"), _dist_version("skops"),
                                                     _dist_version("xgboost-cpu", "xgboost")))]
    same = [f"{n}=={v}" for n, v in filter(None, (_dist_version("mlflow"), _dist_version("numpy"),
                                                   _dist_version("pandas")))]
    return base + models + same, base + models


def _mlserver_python() -> str | None:
    if (3, 9) <= sys.version_info[:2] <= (3, 12):
        return sys.executable
    for name in ("python3.12", "python3.11", "python3.10"):
        if found := shutil.which(name):
            return found
    return None


def ensure_mlserver() -> tuple[Path | None, str]:
    """The MLServer executable in the cached virtualenv (installed when missing or outdated), or why not."""
    exe = MLSERVER_VENV / "bin" / "mlserver"
    marker = MLSERVER_VENV / ".modelpilot-bench-requirements"
    preferred, fallback = mlserver_requirements()
    key = " ".join(preferred)
    MLSERVER_VENV.parent.mkdir(parents=True, exist_ok=True)
    with open(MLSERVER_VENV.parent / ".mlserver.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # another benchmark installing at the same time
        if exe.exists() and marker.exists() and marker.read_text().strip() == key:
            return exe, ""
        python = _mlserver_python()
        if python is None:
            return None, f"MLServer {MLSERVER_VERSION} needs Python 3.9–3.12; none found"
        print(f"installing MLServer {MLSERVER_VERSION} into {MLSERVER_VENV} (once; ~1–2 min) …", flush=True)
        why = ""
        for requirements in (preferred, fallback):
            try:
                shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
                subprocess.run([python, "-m", "venv", str(MLSERVER_VENV)], check=True, capture_output=True,
                               timeout=180)
                subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-m", "pip", "install", "-q",
                                "--disable-pip-version-check", *requirements],
                               check=True, capture_output=True, text=True, timeout=MLSERVER_INSTALL_TIMEOUT)
            except subprocess.TimeoutExpired:
                why = f"pip install took longer than {MLSERVER_INSTALL_TIMEOUT} s"
                continue
            except subprocess.CalledProcessError as exc:
                out = exc.stderr if isinstance(exc.stderr, str) else ""
                errors = [ln for ln in out.strip().splitlines() if "ERROR" in ln] or out.strip().splitlines()[-1:]
                why = f"pip install {' '.join(requirements)} failed: {' '.join(errors)[:300] or exc}"
                print(f"  {why}", flush=True)
                continue
            if exe.exists():
                marker.write_text(key + "\n")
                return exe, ""
            why = "mlserver executable missing after install"
        shutil.rmtree(MLSERVER_VENV, ignore_errors=True)
        return None, why


def mlserver_versions() -> dict[str, str]:
    code = ("import importlib.metadata as m, json\n"
            "out = {}\n"
            "for n in ('mlserver', 'mlserver-mlflow', 'mlflow', 'scikit-learn', 'skops', 'xgboost-cpu', 'xgboost',"
            " 'numpy', 'pandas', 'fastapi', 'uvicorn'):\n"
            "    try: out[n] = m.version(n)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(out))\n")
    done = subprocess.run([str(MLSERVER_VENV / "bin" / "python"), "-c", code], capture_output=True, text=True)
    try:
        return dict(json.loads(done.stdout))
    except ValueError:
        return {}


def bench_mlserver(case: Case, work: Path, args: argparse.Namespace, exe: Path | None, why: str,
                   label: str) -> list[Result]:
    endpoints = ["v2", "/invocations"]
    if exe is None:
        return failed(case, label, endpoints, why)
    models = work / f"mlserver-{case.kind}"
    (models / case.kind).mkdir(parents=True, exist_ok=True)
    http_port, grpc_port, metrics_port = free_port(), free_port(), free_port()
    (models / "settings.json").write_text(json.dumps({
        "http_port": http_port, "grpc_port": grpc_port, "metrics_port": metrics_port,
        "host": "127.0.0.1", "parallel_workers": 0, "debug": False,
    }))
    (models / case.kind / "model-settings.json").write_text(json.dumps({
        "name": case.kind, "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": str(case.model.path)},
    }))
    log = work / f"mlserver-{case.kind}.log"
    base = f"http://127.0.0.1:{http_port}"
    results = []
    try:
        with running([str(exe), "start", str(models)], clean_env(), log, cwd=models) as proc:
            wait_until(lambda: http("GET", base + f"/v2/models/{case.kind}/ready")[0] == 200, proc, 240, label)
            results.append(measure(case, label, "v2", base + f"/v2/models/{case.kind}/infer", case.v2_body, work,
                                   args))
            results.append(measure(case, label, "/invocations", base + "/invocations", case.invocations_body, work,
                                   args))
    except RuntimeError as exc:
        results += failed(case, label, endpoints[len(results):], f"failed: {exc} ({log_tail(log, 2)})")
    return results


# --------------------------------------------------------------------------- report


def _find(results: list[Result], server: str, endpoint: str | None = None) -> Result | None:
    for r in results:
        if r.server.startswith(server) and (endpoint is None or r.endpoint == endpoint) and r.requests_per_s:
            return r
    return None


def _ratio(r: Result, peer: Result | None, scale: float = 1.0, fmt: str = "{:.1f}") -> str:
    if peer is None or not r.requests_per_s or not peer.requests_per_s:
        return "–"
    return fmt.format(r.requests_per_s / peer.requests_per_s * scale)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else fmt.format(value)


def table(results: list[Result]) -> str:
    """Markdown table of one kind; ratios on modelpilot rows (÷ MLServer: the same endpoint)."""
    mlflow = _find(results, MLFLOW)
    ceiling = _find(results, CEILING)
    lines = [
        "| server | endpoint | requests/s | p50 ms | p99 ms | errors | ÷ mlflow | ÷ MLServer | ÷ ceiling |",
        "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in results:
        mine = r.server.startswith(MODELPILOT)
        cells = [r.server, r.endpoint, _num(r.requests_per_s, "{:,.0f}"), _num(r.p50_ms, "{:.2f}"),
                 _num(r.p99_ms, "{:.2f}"), _num(r.errors, "{}")]
        if mine:
            cells += [_ratio(r, mlflow), _ratio(r, _find(results, MLSERVER.split()[0], r.endpoint)),
                      _ratio(r, ceiling, 100, "{:.1f} %")]
        else:
            cells += ["", "", ""]
        if r.note:
            cells[1] += f" — {r.note}"
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def judge(kind: str, results: list[Result]) -> tuple[str, dict[str, Any]]:
    """Issue 11's targets for one kind: every default modelpilot endpoint ≥ 8× mlflow and ≥ 6× MLServer
    (same endpoint) requests/s, with a lower p99 than each, no errors; numeric kinds ≥ 25 % of the ceiling."""
    mine = [r for r in results if r.server == MODELPILOT]
    mlflow = _find(results, MLFLOW)
    ceiling = _find(results, CEILING)
    missing: list[str] = []
    failures: list[str] = []
    parts: list[str] = []
    ratios: dict[str, dict[str, float | bool]] = {}
    if not mine or any(r.requests_per_s is None for r in mine):
        missing.append("modelpilot serve figures")
    measured = [r for r in mine if r.requests_per_s]

    def compare(peer_name: str, peer_for: Callable[[Result], Result | None], target: float) -> None:
        figures = []
        for r in measured:
            peer = peer_for(r)
            if peer is None:
                missing.append(f"{peer_name} {r.endpoint}")
                continue
            x = r.requests_per_s / peer.requests_per_s  # type: ignore[operator]
            lower = r.p99_ms < peer.p99_ms  # type: ignore[operator]
            ratios.setdefault(r.endpoint, {}).update({f"x_{peer_name.lower()}": round(x, 2),
                                                      f"p99_below_{peer_name.lower()}": lower})
            figures.append(f"{r.endpoint} {x:.1f}× (p99 {r.p99_ms:.1f} vs {peer.p99_ms:.1f} ms)")
            if x < target:
                failures.append(f"{r.endpoint} {x:.1f}× {peer_name} < {target:g}×")
            if not lower:
                failures.append(f"{r.endpoint} p99 not below {peer_name}'s")
        if figures:
            parts.append(f"÷ {peer_name} (≥ {target:g}×): " + ", ".join(figures))

    compare("mlflow", lambda r: mlflow, TARGET_X_MLFLOW)
    compare("MLServer", lambda r: _find(results, MLSERVER.split()[0], r.endpoint), TARGET_X_MLSERVER)
    if kind in NUMERIC_KINDS:
        if ceiling is None:
            missing.append("ceiling")
        else:
            shares = []
            for r in measured:
                share = r.requests_per_s / ceiling.requests_per_s  # type: ignore[operator]
                ratios.setdefault(r.endpoint, {})["ceiling_share"] = round(share, 4)
                shares.append(f"{r.endpoint} {share * 100:.1f} %")
                if share < TARGET_CEILING_SHARE:
                    failures.append(f"{r.endpoint} {share * 100:.1f} % of the ceiling < {TARGET_CEILING_SHARE:.0%}")
            if shares:
                parts.append(f"÷ ceiling (≥ {TARGET_CEILING_SHARE:.0%}): " + ", ".join(shares))
    for r in measured:
        if r.errors:
            failures.append(f"{r.endpoint} {r.errors} errors")
        if r.note:
            failures.append(f"{r.endpoint} {r.note}")
    if failures:
        verdict = "NOT MET — " + "; ".join(failures)
        if missing:
            verdict += "; not judged: " + ", ".join(missing)
    elif missing:
        verdict = "NOT JUDGED — missing: " + ", ".join(missing)
    else:
        verdict = "MET"
    line = f"**{kind}: targets {verdict}.** " + " · ".join(parts)
    return line, {"verdict": verdict.split(" —")[0], "failures": failures, "missing": missing, "ratios": ratios}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def parse_kinds(values: list[str] | None) -> list[str]:
    kinds = [k.strip() for v in (values or [",".join(BENCH_KINDS)]) for k in v.split(",") if k.strip()]
    unknown = [k for k in kinds if k not in BENCH_KINDS]
    if unknown:
        raise SystemExit(f"unknown kind(s) {', '.join(unknown)}; kinds: {', '.join(BENCH_KINDS)}")
    return list(dict.fromkeys(kinds))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    p.add_argument("--kinds", action="append", metavar="KIND[,KIND…]",
                   help=f"zoo kinds to run (default all: {', '.join(BENCH_KINDS)})")
    p.add_argument("--duration", type=int, default=10, help="seconds of load per endpoint (default 10)")
    p.add_argument("--warmup", type=int, default=2, help="seconds of warm-up load before each (default 2)")
    p.add_argument("--connections", type=int, default=16, help="wrk connections (default 16)")
    p.add_argument("--skip-mlserver", action="store_true", help="do not install or run MLServer")
    p.add_argument("--only", choices=["modelpilot", "mlflow", "mlserver", "ceiling"], action="append",
                   help="run only these servers (repeatable; for development)")
    p.add_argument("--omp-threads", type=int, metavar="N",
                   help="set OMP_NUM_THREADS=N for every server alike (default: unset, each library's default)")
    p.add_argument("--json", type=Path, help="also write the results as JSON here")
    args = p.parse_args()
    global OMP_THREADS
    OMP_THREADS = args.omp_threads
    kinds = parse_kinds(args.kinds)
    if shutil.which("wrk") is None:
        print("wrk is not installed (apt-get install wrk)", file=sys.stderr)
        return 2
    only = set(args.only or ["modelpilot", "mlflow", "mlserver", "ceiling"])
    if args.skip_mlserver:
        only.discard("mlserver")

    started = time.time()
    load_start = load_average()
    versions = {n: v for n, v in filter(None, (_dist_version(d) for d in (
        "mlflow", "scikit-learn", "skops", "numpy", "pandas", "uvicorn", "uvloop", "httptools", "starlette")))}
    if xgb := _dist_version("xgboost-cpu", "xgboost"):
        versions[xgb[0]] = xgb[1]
    wrk_version = subprocess.run(["wrk", "-v"], capture_output=True, text=True).stdout.split()
    versions["wrk"] = wrk_version[1] if len(wrk_version) > 1 else "?"
    print(f"load average at start: {' '.join(map(str, load_start))} · {os.cpu_count()} CPUs\n"
          f"load: wrk -t1 -c{args.connections} -d{args.duration}s after a {args.warmup} s warm-up, "
          f"1-row requests; kinds: {', '.join(kinds)}", flush=True)

    mlserver_exe: Path | None = None
    mlserver_why = "skipped: --skip-mlserver" if args.skip_mlserver else "skipped: not selected by --only"
    mlserver_label = MLSERVER
    mlserver_info: dict[str, str] = {}
    if "mlserver" in only:
        mlserver_exe, mlserver_why = ensure_mlserver()
        if mlserver_exe is not None:
            mlserver_info = mlserver_versions()
            mlserver_label = (f"MLServer {mlserver_info.get('mlserver', '?')} + mlserver-mlflow "
                              f"{mlserver_info.get('mlserver-mlflow', '?')}")
            print(f"MLServer virtualenv {MLSERVER_VENV}: "
                  + ", ".join(f"{k} {v}" for k, v in mlserver_info.items()), flush=True)
        else:
            mlserver_why = f"skipped: {mlserver_why}"
            print(f"MLServer {mlserver_why}", flush=True)

    results: dict[str, list[Result]] = {}
    summaries: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="modelpilot-bench-") as tmp:
        work = Path(tmp)
        print("building the zoo models …", flush=True)
        cases = build_cases(work, kinds)
        for case in cases:
            print(f"\n[{case.kind}] {case.model.path}", flush=True)
            rows: list[Result] = []
            if "ceiling" in only:
                rows += bench_ceiling(case, work, args)
            if "modelpilot" in only:
                rows += bench_modelpilot(case, work, args)
            if "mlflow" in only:
                rows += bench_mlflow(case, work, args)
            if "mlserver" in only:
                rows += bench_mlserver(case, work, args, mlserver_exe, mlserver_why, mlserver_label)
            elif args.skip_mlserver:
                rows += failed(case, mlserver_label, ["v2", "/invocations"], mlserver_why)
            results[case.kind] = rows

    load_end = load_average()
    info = (f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(started))} · {os.cpu_count()} CPUs · "
            f"{platform.processor() or platform.machine()} · Python {platform.python_version()} · "
            f"load average {load_start[0]:.1f} at the start, {load_end[0]:.1f} at the end · "
            f"{(time.time() - started) / 60:.1f} min")
    print(f"\n{info}")
    print("versions: " + ", ".join(f"{k} {v}" for k, v in versions.items()))
    if mlserver_info:
        print("MLServer virtualenv: " + ", ".join(f"{k} {v}" for k, v in mlserver_info.items()))
    for kind, rows in results.items():
        line, summary = judge(kind, rows)
        summaries[kind] = summary
        print(f"\n### {kind}\n\n{table(rows)}\n\n{line}")
    if args.json:
        args.json.write_text(json.dumps({
            "info": info,
            "command": [Path(sys.executable).name, *sys.argv],
            "started_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(started)),
            "duration_s": round(time.time() - started, 1),
            "load_average": {"start": load_start, "end": load_end},
            "machine": {"cpus": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                        "python": platform.python_version()},
            "load": {"tool": "wrk", "threads": 1, "connections": args.connections, "duration_s": args.duration,
                     "warmup_s": args.warmup, "rows_per_request": 1,
                     "omp_num_threads": args.omp_threads if args.omp_threads is not None
                     else os.environ.get("OMP_NUM_THREADS")},
            "targets": {"x_mlflow": TARGET_X_MLFLOW, "x_mlserver": TARGET_X_MLSERVER,
                        "ceiling_share_numeric": TARGET_CEILING_SHARE, "numeric_kinds": sorted(NUMERIC_KINDS)},
            "versions": versions,
            "mlserver": {"venv": str(MLSERVER_VENV), "versions": mlserver_info, "note": "" if mlserver_info
                         else mlserver_why},
            "results": {kind: [asdict(r) for r in rows] for kind, rows in results.items()},
            "summaries": summaries,
        }, indent=2, ensure_ascii=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())
