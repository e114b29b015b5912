"""The registry adapter's pooling and version cache (issue 10: 1,000 ModelVersions of one model version do not
ask MLflow 3,000 times). MLflow is faked at its HTTP boundary (``httpx.MockTransport``): the count of requests
it saw is the thing under test, which a real server does not expose."""

from __future__ import annotations

import asyncio

import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import pytest

from modelpilot.operator import plan, reconcile
from modelpilot.operator.registry import (
    Credentials,
    ModelRef,
    Registries,
    Registry,
    RegistryNotFound,
    RegistryUnavailable,
)

MLMODEL = "flavors:\n  sklearn: {}\n  python_function: {}\nsignature:\n  inputs: '[{\"type\": \"double\"}]'\n"


def mlflow(seen: Counter[str], versions: dict[str, str], aliases: dict[str, str], delay: float = 0.0,
           statuses: dict[str, str] | None = None) -> httpx.MockTransport:
    def handle(request: httpx.Request) -> httpx.Response:
        path = request.url.path
        seen[path.rsplit("/", 1)[-1]] += 1
        time.sleep(delay)  # a slow registry widens the window in which concurrent resolves overlap
        if path.endswith("/registered-models/alias"):
            version = aliases.get(request.url.params["alias"])
            if version is None:
                return httpx.Response(404, json={"message": "no alias"})
        elif path.endswith("/model-versions/get"):
            version = request.url.params["version"]
            if version not in versions:
                return httpx.Response(404, json={"message": f"version {version} not found"})
        elif path.endswith("/get-download-uri"):
            return httpx.Response(200, json={"artifact_uri": f"mlflow-artifacts:/1/{request.url.params['version']}"})
        elif path.endswith("/MLmodel"):
            return httpx.Response(200, text=MLMODEL)
        else:
            return httpx.Response(404, json={"message": "no such thing"})
        return httpx.Response(200, json={"model_version": {
            "version": version, "run_id": versions[version], "source": "runs:/x/model",
            "status": (statuses or {}).get(version, "READY")}})

    return httpx.MockTransport(handle)


def test_concurrent_resolutions_of_one_version_ask_mlflow_once() -> None:
    seen: Counter[str] = Counter()
    registry = Registry("http://mlflow", transport=mlflow(seen, {"3": "r3"}, {}, delay=0.02))
    with ThreadPoolExecutor(32) as pool:
        models = list(pool.map(lambda _: registry.resolve(ModelRef("iris", version="3")), range(200)))
    assert {(m.version, m.run_id, m.flavor, m.artifact_uri) for m in models} == {
        ("3", "r3", "sklearn", "mlflow-artifacts:/1/3")}
    assert seen == Counter({"get": 1, "get-download-uri": 1, "MLmodel": 1})
    assert all(m.resolved_at for m in models)


def test_an_alias_is_asked_every_time_and_its_version_details_are_reused() -> None:
    seen: Counter[str] = Counter()
    aliases = {"champion": "1"}
    registry = Registry("http://mlflow", transport=mlflow(seen, {"1": "r1", "2": "r2"}, aliases))
    assert registry.resolve(ModelRef("iris", alias="champion")).version == "1"
    assert registry.resolve(ModelRef("iris", alias="champion")).version == "1"
    aliases["champion"] = "2"  # the alias moved: the next resolution must see it
    moved = registry.resolve(ModelRef("iris", alias="champion"))
    assert (moved.version, moved.run_id, moved.alias) == ("2", "r2", "champion")
    assert seen["alias"] == 3 and seen["get-download-uri"] == 2 and seen["MLmodel"] == 2
    # The same version asked by number afterwards: nothing new is asked, and it is not reported as the alias.
    by_number = registry.resolve(ModelRef("iris", version="2"))
    assert by_number.alias == "" and seen["get"] == 0 and seen["get-download-uri"] == 2


def test_failures_and_versions_still_registering_are_not_cached() -> None:
    seen: Counter[str] = Counter()
    versions: dict[str, str] = {}
    statuses = {"4": "PENDING_REGISTRATION"}
    registry = Registry("http://mlflow", transport=mlflow(seen, versions, {}, statuses=statuses))
    with pytest.raises(RegistryNotFound):
        registry.resolve(ModelRef("iris", version="4"))
    versions["4"] = "r4"
    with pytest.raises(RegistryUnavailable, match="still being registered"):
        registry.resolve(ModelRef("iris", version="4"))
    statuses.clear()
    assert registry.resolve(ModelRef("iris", version="4")).run_id == "r4"
    assert seen["get"] == 3


def test_one_pooled_registry_per_tracking_uri_and_credentials() -> None:
    made: list[tuple[str, Credentials]] = []
    seen: Counter[str] = Counter()
    transport = mlflow(seen, {"1": "r1"}, {})

    def factory(uri: str, creds: Credentials) -> Registry:
        made.append((uri, creds))
        return Registry(uri, creds, transport=transport)

    registries = Registries(factory, size=2)
    alice, bob = Credentials(username="alice", password="a"), Credentials(username="bob", password="b")
    first = registries.get("http://a", alice)
    assert registries.get("http://a", alice) is first
    assert registries.get("http://a", bob) is not first  # another tenant's credentials: another client, cache
    assert registries.get("http://b", Credentials()) is not first
    assert len(made) == 3
    assert first.client.is_closed  # the least recently used beyond the bound is closed
    registries.close()


class _Kube:
    def __init__(self, tests: list[dict[str, Any]]) -> None:
        self.tests, self.lists, self.reads = tests, 0, 0

    async def list_abtests(self, namespace: str) -> list[dict[str, Any]]:
        self.lists += 1
        return self.tests

    async def read_abtest(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.reads += 1
        return next((t for t in self.tests if t["metadata"]["name"] == name), None)


def _abtest(name: str, variants: list[dict[str, Any]], replicas: dict[str, int] | None = None) -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": "ns"}, "spec": {"variants": variants},
            "status": {"variants": [{"modelVersion": mv, "replicas": r} for mv, r in (replicas or {}).items()]}}


def test_membership_comes_from_the_index_when_wired_else_from_a_listing() -> None:
    test = _abtest("exp", [{"name": "a", "modelVersion": "mv-a", "weight": 70},
                           {"name": "b", "modelVersion": "mv-b", "weight": 30},
                           {"name": "s", "modelVersion": "mv-s", "shadow": True}], {"mv-a": 3, "mv-b": 1})
    assert plan.memberships(test) == {
        "mv-a": plan.Membership("exp", 3, False), "mv-b": plan.Membership("exp", 1, False),
        "mv-s": plan.Membership("exp", None, True)}
    kube = _Kube([test])
    rec = reconcile.Reconciler.__new__(reconcile.Reconciler)
    rec.kube, rec.membership_lookup = kube, None  # type: ignore[assignment]
    assert asyncio.run(rec.abtest_membership("ns", "mv-b")) == plan.Membership("exp", 1, False)
    assert asyncio.run(rec.abtest_membership("ns", "other")) is None and kube.lists == 2
    # With the index: it names the ABTest, whose replicas are read now (the index can trail the ABTest's own
    # status write by a watch event — here it still has none).
    index = {("ns", "mv-b"): plan.Membership("exp", None, False),
             ("ns", "mv-gone"): plan.Membership("deleted-meanwhile", None, False)}
    rec.membership_lookup = lambda ns, name: index.get((ns, name))
    assert asyncio.run(rec.abtest_membership("ns", "mv-b")) == plan.Membership("exp", 1, False)
    assert asyncio.run(rec.abtest_membership("ns", "mv-gone")) is None
    assert asyncio.run(rec.abtest_membership("ns", "other")) is None
    assert kube.lists == 2 and kube.reads == 2  # no listing; a read only for members


def test_the_lock_table_does_not_grow_with_versions_resolved() -> None:
    seen: Counter[str] = Counter()
    registry = Registry("http://mlflow", transport=mlflow(seen, {str(v): f"r{v}" for v in range(50)}, {}))
    threads = [threading.Thread(target=registry.resolve, args=(ModelRef("iris", version=str(v)),)) for v in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert registry._inflight == {}  # noqa: SLF001 — the bound is the point of the test
