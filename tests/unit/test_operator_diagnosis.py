"""Why serving pods are not ready, from plain pod dicts: problem → Ready condition, phase, one Event per problem."""

from __future__ import annotations

from typing import Any

from rollout_world import not_ready, spec_of

from modelpilot.operator import api, diagnosis, plan, rollout

MISSING = ("the model needs packages this serving image does not have: modelpilot-missing-dependency==1.0 "
           "(install them into the image, or log the model with requirements the image has)")


def _pod(name: str, *, state: dict[str, Any] | None = None, last: dict[str, Any] | None = None, ready: bool = False,
         container: str = "server", deleting: bool = False, init: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    status: dict[str, Any] = {"name": container, "image": "ghcr.io/modelpilot/modelpilot-serve:0.1.0", "ready": ready,
                              "restartCount": 1 if last else 0, "state": state or {"running": {}}}
    if last:
        status["lastState"] = last
    meta: dict[str, Any] = {"name": name}
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {"metadata": meta, "status": {"phase": "Running", "containerStatuses": [status],
                                         **({"initContainerStatuses": init} if init else {})}}


def _crashed(message: str = MISSING, code: int = 1, reason: str = "Error") -> dict[str, Any]:
    return {"terminated": {"exitCode": code, "reason": reason, "message": message,
                           "startedAt": "2026-01-01T00:00:00Z", "finishedAt": "2026-01-01T00:00:40Z"}}


def _backoff(seconds: int) -> dict[str, Any]:
    return {"waiting": {"reason": "CrashLoopBackOff",
                        "message": f"back-off {seconds}s restarting failed container=server pod=iris-7c9d"}}


def _deployment(replicas: int = 1, available: int = 0, ready: int = 0) -> dict[str, Any]:
    return {"metadata": {"generation": 1},
            "spec": {"replicas": replicas, "selector": {"matchLabels": {"modelpilot.io/modelversion": "iris"}}},
            "status": {"observedGeneration": 1, "replicas": replicas, "updatedReplicas": replicas,
                       "availableReplicas": available, "readyReplicas": ready,
                       "conditions": [{"type": "Progressing", "reason": "ReplicaSetUpdated", "message": "m"}]}}


def _ready_condition(status: dict[str, Any]) -> dict[str, Any]:
    return next(c for c in status["conditions"] if c["type"] == "Ready")


# --------------------------------------------------------------------------- pods → problem


def test_a_termination_message_is_the_problem_in_crash_loop_and_while_the_restart_loads_again() -> None:
    looping = diagnosis.serving_problem([_pod("iris-7c9d-abcde", state=_backoff(40), last=_crashed())])
    restarted = diagnosis.serving_problem([_pod("iris-7c9d-abcde", state={"running": {}}, last=_crashed())])
    assert looping is not None and restarted is not None
    assert looping.message == f"pod iris-7c9d-abcde: model server failed: {MISSING}"
    assert restarted.message == looping.message  # the same message in both states: no flapping
    # The back-off delay never enters the message, so a longer back-off changes nothing.
    assert diagnosis.serving_problem([_pod("iris-7c9d-abcde", state=_backoff(80), last=_crashed())]) == looping


def test_nothing_is_a_problem_while_a_pod_starts_or_once_it_is_ready() -> None:
    starting = _pod("iris-a", state={"waiting": {"reason": "ContainerCreating"}})
    loading = _pod("iris-b", state={"running": {"startedAt": "t"}})
    healed = _pod("iris-c", state={"running": {}}, last=_crashed(), ready=True)
    assert diagnosis.serving_problem([starting, loading, healed]) is None
    assert diagnosis.serving_problem([]) is None


def test_waiting_reasons_say_what_blocks_the_container() -> None:
    pull = diagnosis.serving_problem([_pod("p", state={"waiting": {
        "reason": "ErrImagePull", "message": 'rpc error: manifest for ghcr.io/x:9 not found'}})])
    backoff = diagnosis.serving_problem([_pod("p", state={"waiting": {
        "reason": "ImagePullBackOff", "message": 'Back-off pulling image "ghcr.io/x:9"'}})])
    config = diagnosis.serving_problem([_pod("p", state={"waiting": {
        "reason": "CreateContainerConfigError", "message": 'secret "mlflow-creds" not found'}})])
    assert pull and pull.reason == "ErrImagePull" and "manifest for ghcr.io/x:9 not found" in pull.message
    assert pull.message.startswith("pod p: model server cannot pull its image 'ghcr.io/modelpilot/")
    assert backoff and backoff.message.endswith("(ImagePullBackOff)")
    assert diagnosis.same_problem(pull.message, backoff.message)  # they alternate: one problem
    assert config and config.message == ('pod p: model server cannot start (CreateContainerConfigError): '
                                         'secret "mlflow-creds" not found')
    # A configuration error that blocks the restart wins over the crash before it.
    both = diagnosis.serving_problem([_pod("p", state={"waiting": {"reason": "CreateContainerConfigError"}},
                                           last=_crashed())])
    assert both and both.reason == "CreateContainerConfigError"


def test_a_crash_without_message_says_exit_code_or_oom() -> None:
    plain = diagnosis.serving_problem([_pod("p", state=_backoff(10), last=_crashed("", 2))])
    oom = diagnosis.serving_problem([_pod("p", state=_backoff(10), last=_crashed("", 137, "OOMKilled"))])
    bare = diagnosis.serving_problem([_pod("p", state=_backoff(10))])
    assert plain and plain.message == "pod p: model server exited with code 2 (Error)"
    assert oom and "OOMKilled" in oom.message and "memory" in oom.message
    assert bare and bare.message == "pod p: model server keeps crashing (CrashLoopBackOff)"


def test_the_most_informative_problem_wins_then_the_pod_name_and_deleted_pods_are_skipped() -> None:
    exit_only = _pod("iris-a", state=_backoff(10), last=_crashed("", 1))
    with_message = _pod("iris-z", state=_backoff(10), last=_crashed())
    going = _pod("iris-0", state=_backoff(10), last=_crashed("earlier failure"), deleting=True)
    problem = diagnosis.serving_problem([exit_only, going, with_message])
    assert problem and problem.pod == "iris-z"
    twins = [_pod("iris-b", state=_backoff(10), last=_crashed()), _pod("iris-a", state=_backoff(10), last=_crashed())]
    assert diagnosis.serving_problem(twins).pod == "iris-a"  # type: ignore[union-attr]
    assert diagnosis.serving_problem([going]) is None


def test_init_containers_count_but_a_completed_one_is_fine() -> None:
    done = {"name": "fetch", "ready": False, "state": {"terminated": {"exitCode": 0, "reason": "Completed"}}}
    failed = {"name": "fetch", "ready": False, "state": {"terminated": {"exitCode": 1, "reason": "Error",
                                                                        "message": "no network"}}}
    assert diagnosis.serving_problem([_pod("p", init=[done])]) is None
    problem = diagnosis.serving_problem([_pod("p", init=[failed])])
    assert problem and problem.message == "pod p: container fetch failed: no network"


def test_messages_are_bounded_a_log_tail_keeping_its_end() -> None:
    long_line = "x" * 5000
    log_tail = "\n".join(f"line {i}" for i in range(500)) + "\nModuleNotFoundError: No module named 'catboost'"
    one = diagnosis.serving_problem([_pod("p", state=_backoff(10), last=_crashed(long_line))])
    tail = diagnosis.serving_problem([_pod("p", state=_backoff(10), last=_crashed(log_tail))])
    assert one and len(one.message) <= diagnosis.MESSAGE_LIMIT and one.message.endswith("…")
    assert tail and len(tail.message) <= diagnosis.MESSAGE_LIMIT
    assert tail.message.endswith("No module named 'catboost'")


def test_two_problems_are_the_same_on_another_pod_but_not_with_another_message() -> None:
    a = f"pod iris-1: model server failed: {MISSING}"
    assert diagnosis.same_problem(a, f"pod iris-2: model server failed: {MISSING}")
    assert not diagnosis.same_problem(a, "pod iris-1: model server failed: the model failed its input example")


# --------------------------------------------------------------------------- problem → status and Events


def test_a_failing_pod_makes_ready_false_serving_failed_with_one_event() -> None:
    pods = [_pod("iris-7c9d-abcde", state=_backoff(10), last=_crashed())]
    status, events = plan.readiness_status({}, 1, _deployment(), "t1", pods)
    ready = _ready_condition(status)
    assert ready["status"] == "False" and ready["reason"] == "ServingFailed"
    assert ready["message"] == f"pod iris-7c9d-abcde: model server failed: {MISSING}"
    assert status["phase"] == "Retrying"  # the kubelet restarts it: not a dead end before the progress deadline
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("False", "ServingFailed"), "Reconciling": ("True", "ServingFailed"),
                          "Stalled": ("False", "ServingFailed")}
    assert [(e.type, e.reason) for e in events] == [("Warning", "ServingFailed")]
    assert "modelpilot-missing-dependency" in events[0].message

    # The next reconciles (the container restarting, crash-looping, another pod) post nothing new.
    for again in ([_pod("iris-7c9d-abcde", state={"running": {}}, last=_crashed())],
                  [_pod("iris-7c9d-fghij", state=_backoff(80), last=_crashed())]):
        status, events = plan.readiness_status(status, 1, _deployment(), "t2", again)
        assert events == [] and _ready_condition(status)["reason"] == "ServingFailed"
        assert _ready_condition(status)["lastTransitionTime"] == "t1"
    # A different problem is a new Event.
    other = [_pod("iris-7c9d-abcde", state=_backoff(10), last=_crashed("the model failed its input example"))]
    status, events = plan.readiness_status(status, 1, _deployment(), "t3", other)
    assert [e.reason for e in events] == ["ServingFailed"] and "input example" in events[0].message


def test_a_crash_loop_past_the_progress_deadline_is_failed_and_stalled() -> None:
    """Retrying while the kubelet restarts the pods (Reconciling=True); once the Deployment's progress deadline
    has passed Kubernetes has given up on it: Failed, Stalled=True, Reconciling=False, the pod's reason kept."""
    pods = [_pod("iris-7c9d-abcde", state=_backoff(10), last=_crashed())]
    status, _ = plan.readiness_status({}, 1, _deployment(), "t1", pods)
    assert status["phase"] == "Retrying"
    stalled = _deployment()
    stalled["status"]["conditions"] = [{"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                        "message": 'ReplicaSet "iris-7c9d" has timed out progressing.'}]
    status, events = plan.readiness_status(status, 1, stalled, "t2", pods)
    assert status["phase"] == "Failed"
    conditions = {c["type"]: (c["status"], c["reason"]) for c in status["conditions"]}
    assert conditions == {"Ready": ("False", "ServingFailed"), "Reconciling": ("False", "ServingFailed"),
                          "Stalled": ("True", "ServingFailed")}
    assert _ready_condition(status)["message"] == f"pod iris-7c9d-abcde: model server failed: {MISSING}"
    assert [(e.type, e.reason) for e in events] == [("Warning", "ProgressDeadlineExceeded")]


def test_once_pods_are_ready_the_condition_returns_to_normal() -> None:
    failing = [_pod("iris-a", state=_backoff(10), last=_crashed())]
    status, _ = plan.readiness_status({}, 1, _deployment(), "t1", failing)
    status, events = plan.readiness_status(status, 1, _deployment(available=1, ready=1), "t2", None)
    ready = _ready_condition(status)
    assert (ready["status"], ready["reason"]) == ("True", "Available") and status["phase"] == "Ready"
    assert [e.reason for e in events] == ["Ready"]
    # Pods are ignored while the Deployment is available (the reconciler does not even list them).
    status, events = plan.readiness_status(status, 1, _deployment(available=1, ready=1), "t3", failing)
    assert _ready_condition(status)["reason"] == "Available" and events == []


def test_a_rollout_whose_new_pods_fail_while_old_ones_serve_is_degraded() -> None:
    dep = _deployment(replicas=2, available=2, ready=2)
    dep["status"]["updatedReplicas"] = 1
    status, _ = plan.readiness_status({}, 1, dep, "t", [_pod("iris-new", state=_backoff(10),
                                                                      last=_crashed())])
    assert status["phase"] == "Degraded" and _ready_condition(status)["reason"] == "ServingFailed"


def test_the_image_pull_error_stays_while_the_kubelet_backs_off() -> None:
    err = [_pod("p", state={"waiting": {"reason": "ErrImagePull", "message": "manifest unknown"}})]
    backoff = [_pod("p", state={"waiting": {"reason": "ImagePullBackOff", "message": "Back-off pulling image"}})]
    status, events = plan.readiness_status({}, 1, _deployment(), "t1", err)
    assert len(events) == 1
    for pods in (backoff, err, backoff):
        status, events = plan.readiness_status(status, 1, _deployment(), "t2", pods)
        assert events == [] and "manifest unknown" in _ready_condition(status)["message"]


def test_the_progress_deadline_keeps_the_pod_reason_and_posts_its_event_once() -> None:
    dep = _deployment()
    dep["status"]["conditions"] = [{"type": "Progressing", "reason": "ProgressDeadlineExceeded", "message": "late"}]
    pods = [_pod("p", state=_backoff(10), last=_crashed())]
    status, events = plan.readiness_status({}, 1, dep, "t1", pods)
    assert sorted(e.reason for e in events) == ["ProgressDeadlineExceeded", "ServingFailed"]
    stalled = next(c for c in status["conditions"] if c["type"] == "Stalled")
    assert stalled["status"] == "True" and "modelpilot-missing-dependency" in stalled["message"]
    status, events = plan.readiness_status(status, 1, dep, "t2", pods)
    assert events == []


def test_a_canary_that_cannot_become_ready_is_rolled_back_with_the_reason() -> None:
    spec = spec_of({"rollout": {"progressDeadlineSeconds": 60}})
    ro = rollout.start(api.ModelStatus(version="1"), api.ModelStatus(version="2"), spec, 0).rollout
    world = not_ready(ro, spec, total=1, problem="pod iris-canary-x: model server failed")
    waiting = rollout.plan(ro, spec, 1, world, 30)
    assert waiting.action == "Wait"
    late = rollout.plan(ro, spec, 1, world, 120)
    assert late.action == "RollBack" and (late.rollout.reason or "").endswith(": pod iris-canary-x: model server failed")


def test_the_canary_problem_is_recorded_in_the_rollout_once() -> None:
    found = diagnosis.serving_problem([_pod("iris-canary-x", state=_backoff(10), last=_crashed())])
    assert found is not None
    problem = found.message
    ro = api.RolloutStatus(phase=api.RolloutPhase.PROGRESSING)
    events = plan.canary_problem(ro, "2", problem)
    assert ro.canary_problem == problem
    assert [e.reason for e in events] == ["ServingFailed"] and events[0].message.startswith("canary version 2: ")
    assert plan.canary_problem(ro, "2", problem) == []
    assert plan.canary_problem(ro, "2", "") == [] and ro.canary_problem is None
