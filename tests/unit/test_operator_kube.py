"""The Kubernetes adapter when the apiserver cannot be reached: a classified error, never an aiohttp traceback.

A real ``kubernetes_asyncio`` client pointed at a closed local port (bound, then closed, so nothing listens
there): the same connection errors an operator sees while its apiserver is down or restarting.
"""

from __future__ import annotations

import asyncio
import json
import logging
import socket
from typing import Any

import kopf
import pytest
from kubernetes_asyncio import client

from modelpilot.operator import handlers
from modelpilot.operator.kube import Kube, KubeError, KubeUnavailable
from modelpilot.operator.reconcile import Reconciler
from modelpilot.operator.settings import OperatorSettings


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def down() -> Kube:
    config = client.Configuration()
    config.host = f"http://127.0.0.1:{_closed_port()}"
    return Kube(config, timeout=2)


BODY: dict[str, Any] = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
                        "metadata": {"name": "iris", "namespace": "ml", "uid": "u", "generation": 1},
                        "spec": {"model": {"name": "iris", "version": "1"}}}


@pytest.mark.parametrize("call", [
    lambda k: k.read_model_version("ml", "iris"),
    lambda k: k.read_deployment("ml", "iris"),
    lambda k: k.list_abtests("ml"),
    lambda k: k.list_pods("ml", {"a": "b"}),
    lambda k: k.patch_status("ml", "iris", {"phase": "Ready"}),
    lambda k: k.secret_data("ml", "creds"),
    lambda k: k.apply({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "iris", "namespace": "ml"}}),
    lambda k: k.delete_owned("Deployment", "ml", "iris", "u"),
    lambda k: k.read_gateway("gateway-system", "public"),
    lambda k: k.read_gateway_class("nginx"),
], ids=["read_model_version", "read_deployment", "list_abtests", "list_pods", "patch_status", "secret_data",
        "apply", "delete_owned", "read_gateway", "read_gateway_class"])
def test_every_adapter_call_classifies_a_connection_failure(down: Kube, call: Any) -> None:
    async def attempt() -> None:
        try:
            await call(down)
        finally:
            await down.close()

    with pytest.raises(KubeUnavailable) as excinfo:
        asyncio.run(attempt())
    message = str(excinfo.value)
    assert isinstance(excinfo.value, KubeError)  # callers retry it like any API error
    assert down.host in message and "unreachable" in message and "connection refused" in message, message


def test_the_handler_backs_off_with_one_line(down: Kube, caplog: pytest.LogCaptureFixture) -> None:
    settings = OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"},
                                       schedule={"retry_delay_seconds": 10})
    memo = handlers.configure(settings, down)
    logger = logging.getLogger("test")

    async def scenario() -> None:
        # The watch-event handler: no exception reaches kopf; one warning line, and the ticker retries with
        # exponential back-off (10, 20, 40 s … per failure in a row) until a reconcile succeeds.
        with caplog.at_level(logging.WARNING):
            await handlers.model_version_event(body=kopf.Body(BODY), type="ADDED", memo=memo)
            first = [r for r in caplog.records if r.levelno >= logging.WARNING]
            assert len(first) == 1 and "Kubernetes API" in first[0].getMessage(), first
            assert "unreachable" in first[0].getMessage() and first[0].exc_info is None
            assert memo.core.ticker.interval("retry", "ml", "iris") == 10.0
            for _ in range(2):
                await memo.core.tick("retry", "ml", "iris")
            assert memo.core.ticker.interval("retry", "ml", "iris") == 40.0
        caplog.clear()
        # A periodic run (canary tick) and a readiness refresh: no exception escapes, one warning line each,
        # without a traceback.
        with caplog.at_level(logging.WARNING):
            await memo.core.tick("rollout", "ml", "iris")
            await memo.core.refresh("ml", "iris", logger)
        await memo.core.stop()

    asyncio.run(scenario())
    lines = [r for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(lines) == 2 and all(r.exc_info is None for r in lines)
    assert all("unreachable" in r.getMessage() for r in lines)


class _API:
    """The apiserver, faked at the adapter's request boundary (``Kube._request``): counts the reads it gets."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.gets = 0

    async def request(self, method: str, path: str, *, query: Any = None, body: Any = None,
                      content_type: str = "") -> tuple[int, bytes]:
        name = path.rsplit("/", 1)[-1]
        if method == "GET":
            self.gets += 1
            if name not in self.objects:
                return 404, b'{"kind": "Status", "message": "not found"}'
            return 200, json.dumps(self.objects[name]).encode()
        if method == "DELETE":
            self.objects.pop(name, None)
            return 200, b"{}"
        assert method == "PATCH" and "apply-patch" in content_type
        self.objects[name] = json.loads(body)
        return 200, body


def test_owned_objects_known_absent_are_not_read_again_until_applied(down: Kube) -> None:
    fake = _API()
    down._request = fake.request  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test

    def delete(kind: str) -> bool:
        return asyncio.run(down.delete_owned(kind, "ml", "iris", "u"))

    assert not delete("HorizontalPodAutoscaler") and fake.gets == 1
    assert not delete("HorizontalPodAutoscaler") and fake.gets == 1  # remembered
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": "iris", "namespace": "ml", "ownerReferences": [{"uid": "u"}]}}
    asyncio.run(down.apply(hpa))  # applied again: no longer known absent
    assert delete("HorizontalPodAutoscaler") and fake.gets == 2
    assert "iris" not in fake.objects
    assert not delete("HorizontalPodAutoscaler") and fake.gets == 2  # deleted it
    down.assume_absent("PodDisruptionBudget", "ml", "iris", "u")
    assert not delete("PodDisruptionBudget") and fake.gets == 2
    down.assume_absent("PodDisruptionBudget", "ml", "iris-2", "u2")  # another ModelVersion's
    down.forget_owner("u")  # the ModelVersion is gone: its entries go too, not the other's
    assert not delete("PodDisruptionBudget") and fake.gets == 3
    assert not asyncio.run(down.delete_owned("PodDisruptionBudget", "ml", "iris-2", "u2")) and fake.gets == 3
    assert not asyncio.run(down.delete_owned("PodDisruptionBudget", "ml", "iris-2", "u3")) and fake.gets == 4
    down.forget_owner("u2")
    assert not down._absent_by_owner.get("u2")  # noqa: SLF001 — bounded: nothing left for a gone owner


def test_the_client_session_does_not_reread_the_environment_per_request(monkeypatch: pytest.MonkeyPatch,
                                                                         tmp_path: Any) -> None:
    # aiohttp re-reads proxy variables and ~/.netrc on every request when trust_env is on; with neither set the
    # adapter turns it off (a private attribute: this fails if aiohttp renames it), with either it stays on.
    for key in [k for k in __import__("os").environ if k.lower().endswith("_proxy")]:
        monkeypatch.delenv(key)
    monkeypatch.setenv("NETRC", str(tmp_path / "absent"))

    async def trust_env() -> bool:
        config = client.Configuration()
        config.host = "http://127.0.0.1:1"
        kube = Kube(config)
        api = kube._client()  # noqa: SLF001
        try:
            return bool(api.rest_client.pool_manager.trust_env)
        finally:
            await api.close()

    assert asyncio.run(trust_env()) is False
    monkeypatch.setenv("HTTPS_PROXY", "http://127.0.0.1:3128")
    assert asyncio.run(trust_env()) is True


def test_kopfs_watch_events_are_decoded_with_orjson_and_the_same_values() -> None:
    from kopf._cogs.clients import api as kopf_api

    from modelpilot.operator import run

    assert run.fast_watch_decoding() and run.fast_watch_decoding()  # idempotent
    decoder = kopf_api.json  # type: ignore[attr-defined]
    line = b'{"type":"MODIFIED","object":{"metadata":{"name":"iris"},"spec":{"n":1.5,"s":"\\u00e9"}}}'
    assert decoder.loads(line.decode()) == json.loads(line)
    # The apiserver stores numbers as int64 or float64, so those are the extremes a watch can carry.
    extremes = '{"spec": {"max": 9223372036854775807, "min": -9223372036854775808, "f": 1.7976931348623157e308}}'
    assert decoder.loads(extremes) == json.loads(extremes)
    assert decoder.loads('{"n": NaN}')["n"] != decoder.loads('{"n": NaN}')["n"]  # orjson refuses it: stdlib's NaN
    # Server-side apply's bookkeeping is dropped as the event is decoded (nothing reads it); the rest stays.
    managed = {"type": "MODIFIED", "object": {"metadata": {"name": "iris", "managedFields": [{"manager": "m"}],
                                                             "labels": {"a": "b"}}, "status": {"replicas": 1}}}
    event = decoder.loads(json.dumps(managed))
    assert event == {"type": "MODIFIED", "object": {"metadata": {"name": "iris", "labels": {"a": "b"}},
                                                    "status": {"replicas": 1}}}
    listed = {"kind": "DeploymentList", "metadata": {"resourceVersion": "7"},
              "items": [{"metadata": {"name": n, "managedFields": [{"manager": "m"}]}} for n in ("a", "b")]}
    assert decoder.loads(json.dumps(listed))["items"] == [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]
    assert decoder.loads("[1, 2]") == [1, 2] and decoder.loads('"x"') == "x"  # not objects: as they are


def test_idle_connections_are_released_only_when_no_request_is_under_way(down: Kube) -> None:
    async def scenario() -> None:
        with pytest.raises(KubeUnavailable):
            await down.read_deployment("ml", "iris")  # opens the session
        assert down._api is not None  # noqa: SLF001
        down._in_flight = 1  # noqa: SLF001 — as while another request waits for its answer
        assert not await down.release_idle_connections() and down._api is not None  # noqa: SLF001
        down._in_flight = 0  # noqa: SLF001
        assert await down.release_idle_connections() and down._api is None  # noqa: SLF001
        with pytest.raises(KubeUnavailable):
            await down.read_deployment("ml", "iris")  # the next request opens a new session
        assert down._api is not None  # noqa: SLF001
        await down.close()

    asyncio.run(scenario())


def test_releasing_idle_connections_empties_the_url_caches_that_name_gone_objects(down: Kube) -> None:
    import urllib.parse
    import sys

    import yarl

    def cached() -> int:
        caches = [v for m in (sys.modules["yarl._url"], sys.modules["yarl._parse"]) for v in vars(m).values()
                  if hasattr(v, "cache_info")] + [urllib.parse.urlsplit]
        return sum(c.cache_info().currsize for c in caches)

    async def scenario() -> None:
        for i in range(20):  # what a burst leaves: URLs naming objects, parsed by aiohttp and the stdlib
            yarl.URL(f"https://127.0.0.1:6443/apis/apps/v1/namespaces/ml/deployments/mv-{i}?fieldManager=x")
            urllib.parse.urlsplit(f"https://127.0.0.1:6443/api/v1/namespaces/ml/services/mv-{i}")
        assert cached() >= 40
        down._in_flight = 1  # noqa: SLF001 — a request under way keeps the session, not the caches
        assert not await down.release_idle_connections()
        assert cached() == 0
        down._in_flight = 0  # noqa: SLF001
        yarl.URL("https://127.0.0.1:6443/api/v1/namespaces/ml/pods")  # and they fill again as before
        assert cached() >= 1

    asyncio.run(scenario())


def test_kubeconfig_credentials_that_expire_are_refreshed_and_the_file_is_never_written(tmp_path: Any) -> None:
    from modelpilot.operator import run

    plugin = tmp_path / "token.sh"
    plugin.write_text('#!/bin/sh\necho \'{"apiVersion": "client.authentication.k8s.io/v1beta1", '
                      '"kind": "ExecCredential", "status": {"token": "short-lived"}}\'\n')
    plugin.chmod(0o755)

    def kubeconfig(user: dict[str, Any]) -> str:
        path = tmp_path / f"kubeconfig-{len(list(tmp_path.iterdir()))}"
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "c",
            "clusters": [{"name": "k", "cluster": {"server": "https://127.0.0.1:6443"}}],
            "contexts": [{"name": "c", "context": {"cluster": "k", "user": "u"}}],
            "users": [{"name": "u", "user": user}]}))
        return str(path)

    exec_user = kubeconfig({"exec": {"apiVersion": "client.authentication.k8s.io/v1beta1", "command": str(plugin)}})
    before = open(exec_user).read()
    configuration, loader = asyncio.run(run._async_configuration(exec_user))  # noqa: SLF001
    assert loader is not None and configuration.api_key["BearerToken"].endswith("short-lived")
    assert open(exec_user).read() == before  # kubernetes_asyncio would persist refreshed tokens by default
    static = kubeconfig({"token": "forever"})
    _, loader = asyncio.run(run._async_configuration(static))  # noqa: SLF001
    assert loader is None  # nothing to refresh


def test_gateway_reads_answer_none_when_absent_and_raise_when_refused(down: Kube) -> None:
    """What the gateways adapter's fallback rests on: 404 (or the Gateway API not served) is None, anything else
    refused a KubeError with the status; and a SnippetsFilter is deleted like any owned object."""
    answers: dict[str, tuple[int, bytes]] = {
        "/apis/gateway.networking.k8s.io/v1/namespaces/gateway-system/gateways/public":
            (200, b'{"spec": {"gatewayClassName": "nginx"}}'),
        "/apis/gateway.networking.k8s.io/v1/gatewayclasses/nginx": (403, b'{"message": "forbidden"}'),
    }
    paths: list[tuple[str, str]] = []

    async def request(method: str, path: str, **_: Any) -> tuple[int, bytes]:
        paths.append((method, path))
        return answers.get(path, (404, b'{"message": "not found"}'))

    down._request = request  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test
    assert asyncio.run(down.read_gateway("gateway-system", "public")) == {"spec": {"gatewayClassName": "nginx"}}
    assert asyncio.run(down.read_gateway("ml", "public")) is None
    with pytest.raises(KubeError) as refused:
        asyncio.run(down.read_gateway_class("nginx"))
    assert refused.value.status == 403 and "GatewayClass nginx" in str(refused.value)
    assert not asyncio.run(down.delete_owned("SnippetsFilter", "ml", "iris-mirror-iris-s", "u"))
    assert paths[-1] == ("GET", "/apis/gateway.nginx.org/v1alpha1/namespaces/ml/snippetsfilters/iris-mirror-iris-s")


def test_service_applies_wait_their_turn_without_holding_back_other_kinds(down: Kube) -> None:
    """A burst of creates sends a Service apply per ModelVersion; the apiserver allocates their ClusterIPs one at
    a time, so only ``SERVICE_APPLIES`` are sent at once (the rest wait without a connection), while Deployment
    applies pass at once. The apiserver is faked at the adapter's request boundary (``Kube._request``) as a slow
    allocator."""
    from modelpilot.operator import kube as kube_module

    in_flight = {"Service": 0, "Deployment": 0}
    most = {"Service": 0, "Deployment": 0}

    async def request(method: str, path: str, **_: Any) -> tuple[int, bytes]:
        kind = "Service" if "/services/" in path else "Deployment"
        in_flight[kind] += 1
        most[kind] = max(most[kind], in_flight[kind])
        await asyncio.sleep(0.02 if kind == "Service" else 0.001)
        in_flight[kind] -= 1
        return 200, json.dumps({"kind": kind}).encode()

    down._request = request  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test

    def manifest(kind: str, i: int) -> dict[str, Any]:
        return {"apiVersion": "v1" if kind == "Service" else "apps/v1", "kind": kind,
                "metadata": {"name": f"mv-{i}", "namespace": "ml"}}

    async def main() -> None:
        n = 3 * kube_module.SERVICE_APPLIES
        answers = await asyncio.gather(*(down.apply(manifest(kind, i)) for i in range(n)
                                         for kind in ("Service", "Deployment")))
        assert [a["kind"] for a in answers] == ["Service", "Deployment"] * n

    asyncio.run(main())
    assert most["Service"] == kube_module.SERVICE_APPLIES
    assert most["Deployment"] == 3 * kube_module.SERVICE_APPLIES  # not gated


def test_the_http_clients_own_failure_mid_request_is_classified_and_counted_out(down: Kube) -> None:
    """aiohttp 3.14 once raised ``AttributeError`` from inside ``ClientResponse.start`` in a burst (seen in the
    benchmark): the API could not be asked, so it is a ``KubeUnavailable`` — retried — not an exception the
    caller takes for its own bug. Injected at the client's boundary (``ApiClient.call_api``)."""

    class Broken:
        async def call_api(self, *args: Any, **kwargs: Any) -> Any:
            raise AttributeError("'NoneType' object has no attribute 'getall'")

        async def close(self) -> None:
            pass

    down._api = Broken()  # type: ignore[assignment]  # noqa: SLF001 — the boundary under test

    with pytest.raises(KubeUnavailable) as excinfo:
        asyncio.run(down.read_model_version("ml", "iris"))
    assert "HTTP client failed (AttributeError" in str(excinfo.value), excinfo.value
    assert down._in_flight == 0  # noqa: SLF001 — counted out, so idle connections can still be released


def test_a_deployment_spec_changed_by_someone_else_is_told_from_the_operators_own_applies(down: Kube) -> None:
    """``changed_by_others``: a Deployment's watch event shows a ``metadata.generation`` newer than this process's
    last apply of it answered (``kubectl scale``) — but not the event of an apply still under way (its event can
    come before its answer), nor a Deployment this process never applied. The apiserver is faked at the
    adapter's request boundary (``Kube._request``), bumping the generation on every apply as it does."""
    generation = {"now": 0}
    answer_now = asyncio.Event()

    async def request(method: str, path: str, **_: Any) -> tuple[int, bytes]:
        assert method == "PATCH"
        generation["now"] += 1
        seen = generation["now"]
        await answer_now.wait()
        return 200, json.dumps({"kind": "Deployment",
                                "metadata": {"name": "iris", "namespace": "ml", "generation": seen}}).encode()

    down._request = request  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test
    manifest = {"apiVersion": "apps/v1", "kind": "Deployment", "metadata": {"name": "iris", "namespace": "ml"}}

    def event(generation: int) -> dict[str, Any]:
        return {"metadata": {"name": "iris", "namespace": "ml", "generation": generation}}

    async def main() -> None:
        assert not down.changed_by_others(event(7))  # never applied by this process: not judged
        answer_now.set()
        await down.apply(manifest)  # answered generation 1
        assert not down.changed_by_others(event(1))  # the controllers' status updates
        assert down.changed_by_others(event(2))  # kubectl scale
        answer_now.clear()
        applying = asyncio.create_task(down.apply(manifest))  # the operator's own change, generation 2
        await asyncio.sleep(0.01)
        assert not down.changed_by_others(event(2))  # its event before its answer: not someone else's
        answer_now.set()
        await applying
        assert not down.changed_by_others(event(2)) and down.changed_by_others(event(3))
        down.forget_deployment("ml", "iris")  # deleted: nothing known, nothing kept
        assert not down.changed_by_others(event(3))
        assert not down._applying and not down._applied_generations  # noqa: SLF001 — bounded

    asyncio.run(main())


def test_an_object_is_known_absent_before_its_delete_is_answered(down: Kube) -> None:
    """The watch event of this operator's own DELETE can come before the DELETE's answer: the object already
    reads as known absent (its own deletion, nothing to put back) while the request is under way, and no longer
    if the API refused it. The apiserver is faked at the adapter's request boundary (``Kube._request``)."""
    seen_during: list[bool] = []
    answer = {"status": 200}

    async def request(method: str, path: str, **_: Any) -> tuple[int, bytes]:
        if method == "GET":
            return 200, json.dumps({"metadata": {"name": "iris-canary", "ownerReferences": [{"uid": "u"}]}}).encode()
        seen_during.append(down.known_absent("Deployment", "ml", "iris-canary"))
        return answer["status"], b'{"kind": "Status", "message": "refused"}'

    down._request = request  # type: ignore[method-assign]  # noqa: SLF001 — the boundary under test
    assert asyncio.run(down.delete_owned("Deployment", "ml", "iris-canary", "u"))
    assert seen_during == [True] and down.known_absent("Deployment", "ml", "iris-canary")
    down._unmark_absent(("Deployment", "ml", "iris-canary"))  # noqa: SLF001 — as an apply of it would
    answer["status"] = 403
    with pytest.raises(KubeError):
        asyncio.run(down.delete_owned("Deployment", "ml", "iris-canary", "u"))
    assert seen_during == [True, True] and not down.known_absent("Deployment", "ml", "iris-canary")
