"""Adapter: the mirror style of a route's parent Gateway (Gateway → gatewayClassName → GatewayClass
controllerName), read through ``kube.Kube`` and cached per Gateway.

An adapter of the operator (bottom layer, beside ``kube``). The reconcilers ask it only when they render an
HTTPRoute; the pure renderers (``mirroring``, ``abtest``, ``builders``) take the answer as a value. A Gateway's
class rarely changes, so an answer is kept ``TTL_SECONDS`` per Gateway (1,000 ModelVersions on one Gateway
read it once per TTL, not once per reconcile), and reconciles that ask at the same time share one read.

A Gateway or class that cannot be read (absent, forbidden, the Gateway API not served, the apiserver
unreachable) gives the standard ``RequestMirror``: mirroring is never a reason for a reconcile to fail. That
is logged once per Gateway and problem, and kept only ``UNKNOWN_TTL_SECONDS``, so a Gateway created or a
permission granted later is seen soon.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any, Protocol

from modelpilot.operator import api, mirroring
from modelpilot.operator.kube import KubeError
from modelpilot.operator.mirroring import MirrorStyle

log = logging.getLogger(__name__)

#: How long a Gateway's mirror style is trusted once read.
TTL_SECONDS = 300.0
#: How long the fallback is kept when the Gateway or its class could not be read.
UNKNOWN_TTL_SECONDS = 30.0


class GatewayReader(Protocol):
    """The reads this adapter needs (``kube.Kube`` has them)."""

    async def read_gateway(self, namespace: str, name: str) -> dict[str, Any] | None: ...

    async def read_gateway_class(self, name: str) -> dict[str, Any] | None: ...


class MirrorStyles:
    """Gateway (namespace, name) → ``MirrorStyle``, cached (see the module's docstring)."""

    def __init__(self, kube: GatewayReader, ttl: float = TTL_SECONDS, unknown_ttl: float = UNKNOWN_TTL_SECONDS,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.kube = kube
        self.ttl, self.unknown_ttl, self.clock = ttl, unknown_ttl, clock
        self._known: dict[tuple[str, str], tuple[MirrorStyle, float]] = {}  # → (style, valid until)
        self._reading: dict[tuple[str, str], asyncio.Future[MirrorStyle]] = {}
        self._said: set[tuple[tuple[str, str], str]] = set()  # (Gateway, problem) already logged
        self.reads = 0  # Gateway reads made (for tests and benchmarks)

    async def of(self, ref: api.GatewayRef, route_namespace: str) -> MirrorStyle:
        """The mirror style of the Gateway ``ref`` names (its namespace defaults to the route's)."""
        key = (ref.namespace or route_namespace, ref.name)
        while True:
            known = self._known.get(key)
            if known is not None and self.clock() < known[1]:
                return known[0]
            pending = self._reading.get(key)
            if pending is None:
                break
            try:
                return await asyncio.shield(pending)
            except asyncio.CancelledError:
                if not pending.cancelled():
                    raise  # this caller was cancelled, not the read it waited for
                # the read was cancelled with the reconcile that made it: ask again
        future: asyncio.Future[MirrorStyle] = asyncio.get_running_loop().create_future()
        self._reading[key] = future
        try:
            style, problem = await self._read(*key)
        except asyncio.CancelledError:
            future.cancel()
            raise
        except BaseException as exc:
            future.set_exception(exc)
            future.exception()  # retrieved: no "never retrieved" warning when nobody else waited
            raise
        finally:
            del self._reading[key]
        self._known[key] = (style, self.clock() + (self.unknown_ttl if problem else self.ttl))
        if not problem:
            self._said = {said for said in self._said if said[0] != key}  # a later problem is said again
        elif (key, problem) not in self._said:
            self._said.add((key, problem))
            log.warning("mirroring through Gateway %s/%s takes the standard RequestMirror form: %s", *key, problem)
        future.set_result(style)
        return style

    async def _read(self, namespace: str, name: str) -> tuple[MirrorStyle, str]:
        """(style, problem): the problem is "" when the class was read."""
        self.reads += 1
        try:
            gateway = await self.kube.read_gateway(namespace, name)
            if gateway is None:
                return MirrorStyle.REQUEST_MIRROR, "the Gateway is not found"
            class_name = str((gateway.get("spec") or {}).get("gatewayClassName") or "")
            gateway_class = await self.kube.read_gateway_class(class_name) if class_name else None
        except KubeError as exc:
            return MirrorStyle.REQUEST_MIRROR, str(exc)
        if gateway_class is None:
            return MirrorStyle.REQUEST_MIRROR, f"its GatewayClass {class_name!r} is not found"
        return mirroring.style_of((gateway_class.get("spec") or {}).get("controllerName")), ""
