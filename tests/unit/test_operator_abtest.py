"""ABTest routing builders: replica ratios, HTTPRoute shape, and the route's own traffic split."""

from __future__ import annotations

from collections import Counter

import pytest

from modelpilot.operator import abtest

SPEC = {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 90},
                     {"name": "b", "modelVersion": "iris-b", "weight": 10},
                     {"name": "s", "modelVersion": "iris-s", "weight": 0, "shadow": True}],
        "routing": {"gatewayRef": {"name": "gw", "namespace": "infra"}, "headerPinning": {"header": "x-variant"}}}


@pytest.mark.parametrize("weights,replicas,expected", [
    ((90, 10), (2, 2), {"iris-a": 4, "iris-b": 1}),
    ((50, 50), (2, 2), {"iris-a": 2, "iris-b": 2}),
    ((100, 0), (3, 1), {"iris-a": 4, "iris-b": 0}),  # a 0 % variant gets no pod, so no traffic at all
    ((75, 25), (2, 2), {"iris-a": 3, "iris-b": 1}),
])
def test_replica_ratio(weights: tuple[int, int], replicas: tuple[int, int], expected: dict[str, int]) -> None:
    vs = [abtest.Variant("a", "iris-a", weights[0], False), abtest.Variant("b", "iris-b", weights[1], False)]
    split = abtest.replica_split(vs, {"iris-a": replicas[0], "iris-b": replicas[1]})
    assert split == expected
    eff = abtest.effective_weights(vs, split)
    assert sum(eff.values()) in (99, 100, 101)


def test_the_route_has_pinning_rules_weights_and_a_mirror_for_the_shadow() -> None:
    vs = abtest.variants(SPEC)
    route = abtest.build_httproute("iris", "ml", "uid", SPEC, vs, {"a": 90, "b": 10})
    assert route["spec"]["parentRefs"] == [{"group": "gateway.networking.k8s.io", "kind": "Gateway", "name": "gw",
                                            "namespace": "infra"}]
    pin_a, pin_b, default = route["spec"]["rules"]
    assert pin_a["matches"][0]["headers"][0] == {"type": "Exact", "name": "x-variant", "value": "a"}
    assert [(r["name"], r["weight"]) for r in default["backendRefs"]] == [("iris-a", 90), ("iris-b", 10)]
    assert default["filters"] == [{"type": "RequestMirror", "requestMirror": {
        "backendRef": {"kind": "Service", "name": "iris-s", "port": 80}}}]
    assert route["metadata"]["ownerReferences"][0]["kind"] == "ABTest"


def test_the_simulated_data_plane_follows_weights_and_pins() -> None:
    vs = abtest.variants(SPEC)
    route = abtest.build_httproute("iris", "ml", "uid", SPEC, vs, {"a": 90, "b": 10})
    counts = Counter(abtest.pick_backend(route, {}, i / 1000) for i in range(1000))
    assert counts == {"iris-a": 900, "iris-b": 100}
    assert abtest.pick_backend(route, {"X-Variant": "b"}, 0.0) == "iris-b"


def test_split_text_for_the_printer_column() -> None:
    assert abtest.split_text(abtest.variants(SPEC), {"a": 90, "b": 10}) == "a=90,b=10,s=shadow"


def test_provider_choice() -> None:
    assert abtest.provider(SPEC) == "gateway"
    assert abtest.provider({"variants": SPEC["variants"]}) == "replicas"
