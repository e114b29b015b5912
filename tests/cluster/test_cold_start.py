"""Cold start: a fresh operator and a ModelVersion created at the same moment become Ready, 20 times in a row.

Issue 10 saw "apply one ModelVersion right after the environment starts" never become Ready twice out of three:
once readiness never arrived (a Deployment event that came before ``status.model`` was written was dropped and
nothing re-checked), once the operator died on start because its metrics port 8080 was taken. Here every
iteration is its own cold start:

* a fresh namespace and a fresh operator process run exactly as users run it (``python -m modelpilot.cli
  operator``, the env of the ``operator_env`` fixture), standalone (``MODELPILOT_PEERING=""``) and watching only
  that namespace (``MODELPILOT_NAMESPACES``), so iterations never see each other's objects;
* the ModelVersion is created while the operator is still starting: just before ``Popen`` on even iterations,
  right after it on odd ones;
* it must become ``Ready=True`` with ``observedGeneration`` current within 60 s of the iteration's start, and its
  Service must route: a ready endpoint in the Service's EndpointSlices that is a pod of this ModelVersion, and
  one prediction sent to the Service's ClusterIP (``ServiceTraffic``) answered by this ModelVersion's version.
  Every iteration runs the real model server in a container on the real node;
* "restart" iterations cover "the Deployment became ready before status.model was written": the operator is
  killed (SIGKILL, a crash) as soon as its Deployment exists, the pods become ready while no operator runs, and
  a second fresh operator must still bring the ModelVersion to Ready (the order of events must not matter).

Ports (the choice): on even iterations the operator runs on its DEFAULT metrics (8080) and liveness (8082) ports
whenever they are free, as a user's operator would (serving pods listen on 8080 in their own network namespaces,
so they never collide with it); when another process on this shared machine holds one, that iteration gives it a
free port instead (``MODELPILOT_METRICS_PORT`` / ``MODELPILOT_LIVENESS_PORT``) so the cold start is still
tested; odd iterations always set free ports. A taken port itself must give a clear, immediate error naming the
variable, not a silent death:
``test_a_taken_port_is_one_clear_error_at_start`` asserts that.

Timings (operator start → Ready) are printed, not asserted. If the session's own clusterwide ``operator``
fixture is running (the whole cluster suite in one session), it is frozen (SIGSTOP) for this module so the
operator under test is the only one acting.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from kubernetes import client
from kubernetes.client.rest import ApiException

from modelpilot_dev.workloads import ServiceTraffic, wait_for

GROUP, VERSION, PLURAL = "modelpilot.io", "v1alpha1", "modelversions"
REPO = Path(__file__).resolve().parents[2]
DEFAULT_METRICS_PORT, DEFAULT_LIVENESS_PORT = 8080, 8082
ITERATION_SECONDS = 60.0
NAME = "iris"  # the ModelVersion, its Deployment and its Service
SETOSA = {"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]}

# 20 iterations, each a cold start of the real model server; three of them also crash the operator midway.
RESTART = {5, 9, 13}
SCENARIOS = [i in RESTART for i in range(20)]


# --- helpers -----------------------------------------------------------------------------------------------

def _port_free(port: int) -> bool:
    """Whether ``0.0.0.0:port`` can be listened on, binding as the operator's servers do (SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("0.0.0.0", port))
        except OSError:
            return False
    return True


def _free_port() -> int:
    from modelpilot_dev.environment import free_port

    return int(free_port())


def _ports_env(defaults: bool) -> tuple[dict[str, str], str]:
    """Env for the operator's ports: the defaults when wanted and free (nothing set), else a free port; and a
    description."""
    env: dict[str, str] = {}
    said = []
    for var, default in (("MODELPILOT_METRICS_PORT", DEFAULT_METRICS_PORT),
                         ("MODELPILOT_LIVENESS_PORT", DEFAULT_LIVENESS_PORT)):
        if not defaults:
            env[var] = str(_free_port())
            said.append(f"{env[var]}")
        elif _port_free(default):
            said.append(f"{default}")
        else:
            env[var] = str(_free_port())
            said.append(f"{default} taken -> {env[var]}")
    return env, ("ports " if defaults else "free ports ") + ", ".join(said)


class Operator:
    """One ``modelpilot operator`` process with its own log file."""

    def __init__(self, env: dict[str, str], logpath: Path) -> None:
        self.logpath = logpath
        self._log = logpath.open("wb")
        self.started = time.monotonic()
        self.proc = subprocess.Popen([sys.executable, "-m", "modelpilot.cli", "operator"], env=env,
                                     stdout=self._log, stderr=subprocess.STDOUT, cwd=REPO)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self._log.close()

    def crash(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)

    def tail(self, lines: int = 60) -> str:
        try:
            text = self.logpath.read_text(errors="replace").splitlines()
        except OSError as exc:
            return f"(no log: {exc})"
        return "\n".join(text[-lines:])


def _mv(version: str) -> dict[str, Any]:
    spec: dict[str, Any] = {"model": {"name": "iris", "version": version}, "replicas": 1}
    return {"apiVersion": f"{GROUP}/{VERSION}", "kind": "ModelVersion", "metadata": {"name": NAME}, "spec": spec}


def _ready(custom: client.CustomObjectsApi, ns: str) -> dict[str, Any] | None:
    body = dict(custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME))
    status = body.get("status") or {}
    ready = next((c for c in status.get("conditions") or [] if c.get("type") == "Ready"), {})
    current = status.get("observedGeneration") == body["metadata"]["generation"]
    return body if ready.get("status") == "True" and current else None


def _routed_endpoints(api_client: Any, core: client.CoreV1Api, ns: str) -> list[str]:
    """Ready endpoints of the Service (its EndpointSlices) that are pods of this ModelVersion."""
    slices = client.DiscoveryV1Api(api_client).list_namespaced_endpoint_slice(
        ns, label_selector=f"kubernetes.io/service-name={NAME}").items
    names = [ep.target_ref.name for s in slices for ep in s.endpoints or []
             if ep.conditions and ep.conditions.ready and ep.target_ref is not None]
    ours = {p.metadata.name for p in core.list_namespaced_pod(
        ns, label_selector=f"modelpilot.io/modelversion={NAME}").items}
    return [n for n in names if n in ours]


def _deployment_exists(apps: client.AppsV1Api, ns: str) -> bool:
    try:
        apps.read_namespaced_deployment(NAME, ns)
        return True
    except ApiException as exc:
        if exc.status == 404:
            return False
        raise


def _diagnosis(custom: Any, apps: Any, core: Any, ns: str, operators: list[Operator]) -> str:
    parts = []
    try:
        body = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME)
        parts.append("ModelVersion metadata.generation=%s status=%s" % (
            body["metadata"].get("generation"), json.dumps(body.get("status"), indent=1, default=str)[:4000]))
    except Exception as exc:  # noqa: BLE001 - a diagnosis, whatever state the cluster is in
        parts.append(f"ModelVersion: {exc}")
    try:
        dep = apps.read_namespaced_deployment(NAME, ns)
        parts.append(f"Deployment generation={dep.metadata.generation} observed={dep.status.observed_generation} "
                     f"ready={dep.status.ready_replicas} available={dep.status.available_replicas}")
    except Exception as exc:  # noqa: BLE001
        parts.append(f"Deployment: {exc}")
    try:
        pods = core.list_namespaced_pod(ns).items
        parts.append("pods: " + "; ".join(
            f"{p.metadata.name} {p.status.phase} node={p.spec.node_name} conditions="
            f"{[(c.type, c.status, c.reason) for c in p.status.conditions or []]} containers="
            f"{[(c.ready, c.restart_count, c.state.to_dict() if c.state else None) for c in p.status.container_statuses or []]}"
            for p in pods))
        events = sorted(core.list_namespaced_event(ns).items, key=lambda e: str(e.last_timestamp or e.event_time))
        parts.append("events:\n" + "\n".join(
            f"  {e.last_timestamp or e.event_time} {e.involved_object.kind}/{e.involved_object.name} {e.type} "
            f"{e.reason}: {e.message}" for e in events[-20:]))
    except Exception as exc:  # noqa: BLE001
        parts.append(f"pods: {exc}")
    for i, op in enumerate(operators):
        parts.append(f"--- operator #{i + 1} (exit code {op.proc.poll()}), {op.logpath}, last lines:\n{op.tail()}")
    return "\n".join(parts)


# --- fixtures ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def only_operator_under_test(request: pytest.FixtureRequest) -> Iterator[None]:
    """Freeze the session's clusterwide operator if this session already runs it, so it cannot act here."""
    session_operator = None
    try:
        defs = request._fixturemanager.getfixturedefs("operator", request.node)  # type: ignore[attr-defined]
        for fixturedef in defs or ():
            cached = getattr(fixturedef, "cached_result", None)
            if cached and isinstance(cached[0], subprocess.Popen) and cached[0].poll() is None:
                session_operator = cached[0]
    except Exception:  # noqa: BLE001 - pytest internals: if they change, at worst nothing is frozen
        session_operator = None
    if session_operator is not None:
        session_operator.send_signal(signal.SIGSTOP)
        print(f"\nfroze the session's operator (pid {session_operator.pid}) for the cold-start tests")
    try:
        yield
    finally:
        if session_operator is not None:
            session_operator.send_signal(signal.SIGCONT)


# --- tests -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("restart", SCENARIOS,
                         ids=[f"{i:02d}{'-restart' if r else ''}" for i, r in enumerate(SCENARIOS)])
def test_a_model_version_created_with_a_cold_operator_becomes_ready(
    restart: bool, request: pytest.FixtureRequest, crds_established: None, only_operator_under_test: None,
    operator_env: Any, api_client: Any, core: client.CoreV1Api, apps: client.AppsV1Api,
    custom: client.CustomObjectsApi, iris_version: str, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    index = int(request.node.callspec.id[:2])
    create_first = index % 2 == 0
    ns = f"cold-{index:02d}-{uuid.uuid4().hex[:6]}"
    ports, ports_said = _ports_env(defaults=index % 2 == 0)
    env = operator_env(MODELPILOT_NAMESPACES=ns, MODELPILOT_PEERING="", **ports)
    for var in ("MODELPILOT_METRICS_PORT", "MODELPILOT_LIVENESS_PORT"):
        if var not in ports:
            env.pop(var, None)  # the defaults, as a user's operator has them
    body = _mv(iris_version)
    operators: list[Operator] = []
    notes: list[str] = []
    started = time.monotonic()
    deadline = started + ITERATION_SECONDS

    def left() -> float:
        return max(0.5, deadline - time.monotonic())

    core.create_namespace({"metadata": {"name": ns}})
    try:
        if create_first:
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
            operators.append(Operator(env, tmp_path / "operator-1.log"))
        else:
            operators.append(Operator(env, tmp_path / "operator-1.log"))
            custom.create_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, body)
        try:
            if restart:
                wait_for(lambda: _deployment_exists(apps, ns) or operators[0].proc.poll() is not None,
                         left(), 0.05, "the Deployment to exist")
                assert operators[0].proc.poll() is None, "the operator exited before applying the Deployment"
                operators[0].crash()
                status = custom.get_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, NAME).get("status") or {}
                notes.append(f"killed at {time.monotonic() - operators[0].started:.1f}s with status.model "
                             f"{'written' if status.get('model') else 'not written'}, Ready "
                             f"{next((c['status'] for c in status.get('conditions') or [] if c['type'] == 'Ready'), '-')}")
                # The pods become ready while no operator runs; then a fresh operator starts.
                wait_for(lambda: (apps.read_namespaced_deployment(NAME, ns).status.ready_replicas or 0) >= 1,
                         left(), 0.1, "the Deployment's pods to be ready with the operator down")
                operators.append(Operator(env, tmp_path / "operator-2.log"))
            wait_for(lambda: _ready(custom, ns) or operators[-1].proc.poll() is not None, left(), 0.25,
                     "the ModelVersion Ready=True with observedGeneration current")
            assert operators[-1].proc.poll() is None, f"the operator exited with {operators[-1].proc.returncode}"
            assert _ready(custom, ns)
            ready_at = time.monotonic()
            endpoints = wait_for(lambda: _routed_endpoints(api_client, core, ns), left(), 0.2,
                                 "a ready endpoint of the Service that is a pod of this ModelVersion")
            with ServiceTraffic(api_client, ns, NAME, "iris", rate=4, row=SETOSA) as traffic:
                wait_for(lambda: traffic.answers or traffic.failures, left(), 0.1,
                         "a prediction through the Service")
            if traffic.unprogrammed:
                notes.append(f"{traffic.unprogrammed} connection(s) refused before kube-proxy programmed the "
                             "endpoint")
            assert traffic.answers.get(iris_version), (
                f"the prediction through the Service was not answered by version {iris_version} "
                f"(answers by version {traffic.answers}, failures {traffic.failures})")
            notes.append(f"prediction answered by version {iris_version}")
        except (AssertionError, TimeoutError) as exc:
            raise AssertionError(f"[{ns}] {exc}\n{_diagnosis(custom, apps, core, ns, operators)}") from None
        timing = (f"operator start -> Ready {ready_at - operators[0].started:5.1f}s"
                  + (f" (restart -> Ready {ready_at - operators[-1].started:.1f}s)" if restart else ""))
        with capsys.disabled():
            print(f"\ncold start {index:02d}{' restart' if restart else ''}: {timing}; "
                  f"{'MV created before Popen' if create_first else 'MV created after Popen'}; {ports_said}; "
                  f"endpoints {endpoints}" + "".join(f"; {n}" for n in notes))
    finally:
        for op in operators:
            op.stop()
        try:
            core.delete_namespace(ns)
        except ApiException:
            pass


@pytest.mark.parametrize("var", ["MODELPILOT_METRICS_PORT", "MODELPILOT_LIVENESS_PORT"])
def test_a_taken_port_is_one_clear_error_at_start(var: str, operator_env: Any) -> None:
    """A port held by another process stops the operator at once with one line naming the variable and the port
    (exit code 2), before it connects to anything; not a traceback, not a silent death later."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as holder:
        holder.bind(("0.0.0.0", 0))
        holder.listen()
        taken = holder.getsockname()[1]
        other = "MODELPILOT_LIVENESS_PORT" if var == "MODELPILOT_METRICS_PORT" else "MODELPILOT_METRICS_PORT"
        env = operator_env(MODELPILOT_NAMESPACES="cold-ports", MODELPILOT_PEERING="",
                           **{var: str(taken), other: str(_free_port())})
        done = subprocess.run([sys.executable, "-m", "modelpilot.cli", "operator"], env=env, capture_output=True,
                              text=True, timeout=60, cwd=REPO)
    assert done.returncode == 2, (done.returncode, done.stderr[-2000:])
    assert f"{var}={taken}: cannot listen on 0.0.0.0:{taken}" in done.stderr, done.stderr[-2000:]
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
