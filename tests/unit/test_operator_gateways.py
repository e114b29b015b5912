"""The gateways adapter: a route's Gateway → its class's controller → the mirror style, cached per Gateway,
with the standard RequestMirror (logged once, never an error) when the Gateway or class cannot be read."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import pytest

from modelpilot.operator import api
from modelpilot.operator.gateways import MirrorStyles
from modelpilot.operator.kube import KubeError, KubeUnavailable
from modelpilot.operator.mirroring import NGF_CONTROLLER, MirrorStyle

PUBLIC = api.GatewayRef(name="public", namespace="gateway-system")


class Reads:
    """Gateways and classes in memory; ``refuse``: what a read raises instead (e.g. 403); counts reads."""

    def __init__(self, controller: str | None = NGF_CONTROLLER) -> None:
        self.gateways = {("gateway-system", "public"): {"spec": {"gatewayClassName": "nginx"}}}
        self.classes = {} if controller is None else {"nginx": {"spec": {"controllerName": controller}}}
        self.refuse: KubeError | None = None
        self.gateway_reads = 0
        self.delay = 0.0

    async def read_gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
        self.gateway_reads += 1
        await asyncio.sleep(self.delay)
        if self.refuse is not None:
            raise self.refuse
        return self.gateways.get((namespace, name))

    async def read_gateway_class(self, name: str) -> dict[str, Any] | None:
        return self.classes.get(name)


def _styles(reads: Reads, clock: list[float]) -> MirrorStyles:
    return MirrorStyles(reads, ttl=300, unknown_ttl=30, clock=lambda: clock[0])


def test_an_ngf_class_is_read_once_per_ttl_and_other_controllers_get_the_standard_filter() -> None:
    reads, clock = Reads(), [0.0]
    styles = _styles(reads, clock)

    async def ask(times: int) -> list[MirrorStyle]:
        return [await styles.of(PUBLIC, "ml") for _ in range(times)]

    assert asyncio.run(ask(1000)) == [MirrorStyle.NGF_SNIPPETS] * 1000
    assert reads.gateway_reads == 1  # 1,000 reconciles rendering a route: one read
    reads.classes["nginx"]["spec"]["controllerName"] = "gateway.envoyproxy.io/gatewayclass-controller"
    clock[0] = 299
    assert asyncio.run(ask(1)) == [MirrorStyle.NGF_SNIPPETS] and reads.gateway_reads == 1
    clock[0] = 301  # the TTL passed: read again
    assert asyncio.run(ask(1)) == [MirrorStyle.REQUEST_MIRROR] and reads.gateway_reads == 2
    # The Gateway's namespace defaults to the route's.
    local = api.GatewayRef(name="public")
    reads.gateways[("ml", "public")] = {"spec": {"gatewayClassName": "nginx"}}
    reads.classes["nginx"]["spec"]["controllerName"] = NGF_CONTROLLER
    assert asyncio.run(styles.of(local, "ml")) == MirrorStyle.NGF_SNIPPETS and reads.gateway_reads == 3


def test_reconciles_asking_at_once_share_one_read() -> None:
    reads, clock = Reads(), [0.0]
    reads.delay = 0.01
    styles = _styles(reads, clock)

    async def burst() -> list[MirrorStyle]:
        return list(await asyncio.gather(*(styles.of(PUBLIC, "ml") for _ in range(50))))

    assert asyncio.run(burst()) == [MirrorStyle.NGF_SNIPPETS] * 50
    assert reads.gateway_reads == 1


@pytest.mark.parametrize("problem", [
    "absent gateway", "absent class", "forbidden", "unreachable",
])
def test_a_gateway_or_class_that_cannot_be_read_gives_request_mirror_logged_once(
    problem: str, caplog: pytest.LogCaptureFixture
) -> None:
    reads, clock = Reads(), [0.0]
    if problem == "absent gateway":
        reads.gateways.clear()
    elif problem == "absent class":
        reads.classes.clear()
    elif problem == "forbidden":
        reads.refuse = KubeError('read Gateway gateway-system/public: 403 gateways.gateway.networking.k8s.io '
                                 '"public" is forbidden', 403)
    else:
        reads.refuse = KubeUnavailable("the Kubernetes API at https://x is unreachable")
    styles = _styles(reads, clock)
    caplog.set_level(logging.WARNING, logger="modelpilot.operator.gateways")
    for t in (0.0, 10.0, 31.0, 62.0):  # kept 30 s, then asked again: never an exception, said once
        clock[0] = t
        assert asyncio.run(styles.of(PUBLIC, "ml")) == MirrorStyle.REQUEST_MIRROR
    assert reads.gateway_reads == 3
    said = [r.getMessage() for r in caplog.records]
    assert len(said) == 1 and "gateway-system/public" in said[0] and "RequestMirror" in said[0], said
    # Readable again (the Gateway created, the permission granted): its style is seen within the short TTL.
    reads.refuse = None
    reads.gateways[("gateway-system", "public")] = {"spec": {"gatewayClassName": "nginx"}}
    reads.classes["nginx"] = {"spec": {"controllerName": NGF_CONTROLLER}}
    clock[0] = 100.0
    assert asyncio.run(styles.of(PUBLIC, "ml")) == MirrorStyle.NGF_SNIPPETS


def test_a_cancelled_read_is_not_cached_and_the_next_caller_reads_again() -> None:
    reads, clock = Reads(), [0.0]
    reads.delay = 1.0
    styles = _styles(reads, clock)

    async def cancel_first() -> MirrorStyle:
        first = asyncio.ensure_future(styles.of(PUBLIC, "ml"))
        await asyncio.sleep(0.01)
        waiting = asyncio.ensure_future(styles.of(PUBLIC, "ml"))  # shares the first's read
        await asyncio.sleep(0.01)
        first.cancel()
        reads.delay = 0.0
        return await waiting

    assert asyncio.run(cancel_first()) == MirrorStyle.NGF_SNIPPETS
    assert reads.gateway_reads == 2
