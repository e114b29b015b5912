"""The typed API (``modelpilot.operator.api``) cannot drift from ``crds/``, and everything we build parses with it.

1. **Drift**: each CRD's ``openAPIV3Schema`` (spec and status) and the pydantic model's JSON schema
   (``model_json_schema(by_alias=True)``) are reduced to one canonical shape — per node the JSON types, enum
   values, default, bounds (``minimum``, ``maxLength``, ``pattern`` …, ``format: date-time``), and for objects
   the property names, required names and what happens to unknown fields (pruned / kept / a typed map) —
   and must be equal at every level. Tests below break copies of both sides and check that the comparison
   names the break, so the drift test is known to fail when it should.
2. **Parsing**: every example manifest in ``examples/`` and in ``docs/api.md``, every ModelVersion / ABTest
   body the operator-side unit tests build, what the ModelVersion reconciler writes on its plain, canary,
   promote and rollback paths, and what the ABTest reconciler writes, parse with the models (whose nested
   status objects forbid what the API server would prune).

Not checked here: the CEL rules (``x-kubernetes-validations``), list semantics (``x-kubernetes-list-type``,
map keys), integer widths (``format: int32``), ``nullable``, descriptions, and the inside of free-form objects
(``status.comparison``, ``ABTest.spec.analysis``). ``status.rollout`` is open (unknown fields kept) but its
known fields are declared, and compared like any other.
"""

from __future__ import annotations

import ast
import asyncio
import copy
import importlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel, ValidationError

from modelpilot.operator import api, contract

ROOT = Path(__file__).resolve().parents[2]
TESTS = Path(__file__).resolve().parent
CRD_FILES = {"ModelVersion": "modelpilot.io_modelversions.yaml", "ABTest": "modelpilot.io_abtests.yaml"}
MODELS: dict[str, dict[str, type[BaseModel]]] = {
    "ModelVersion": {"spec": api.ModelVersionSpec, "status": api.ModelVersionStatus},
    "ABTest": {"spec": api.ABTestSpec, "status": api.ABTestStatus},
}
RESOURCES: dict[str, type[BaseModel]] = {"ModelVersion": api.ModelVersion, "ABTest": api.ABTest}
#: Bounds compared on every node (JSON Schema keywords both sides spell the same way).
BOUNDS = ("minimum", "maximum", "exclusiveMinimum", "exclusiveMaximum", "minLength", "maxLength", "pattern",
          "minItems", "maxItems", "minProperties", "maxProperties")


def crd(kind: str) -> dict[str, Any]:
    return yaml.safe_load((ROOT / "crds" / CRD_FILES[kind]).read_text())  # type: ignore[no-any-return]


def crd_schema(kind: str) -> dict[str, Any]:
    (version,) = crd(kind)["spec"]["versions"]
    return version["schema"]["openAPIV3Schema"]  # type: ignore[no-any-return]


# --------------------------------------------------------------------------- canonical shapes


def _crd_shape(node: dict[str, Any]) -> dict[str, Any]:
    branches = node.get("anyOf") or [node]
    shape: dict[str, Any] = {"types": sorted({b["type"] for b in branches if "type" in b} | (
        {node["type"]} if "type" in node else set()))}
    _common(shape, node, branches)
    if "object" in shape["types"]:
        if node.get("x-kubernetes-preserve-unknown-fields"):
            shape["unknown"] = "kept"
        elif isinstance(node.get("additionalProperties"), dict):
            shape["unknown"] = {"map of": _crd_shape(node["additionalProperties"])}
        else:
            shape["unknown"] = "pruned"
        shape["properties"] = {k: _crd_shape(v) for k, v in (node.get("properties") or {}).items()}
        shape["required"] = sorted(node.get("required") or [])
    if "array" in shape["types"]:
        shape["items"] = _crd_shape(node["items"])
    return shape


def _model_shape(node: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    branches = list(_flatten(node, defs))
    shape: dict[str, Any] = {"types": sorted({b["type"] for b in branches if "type" in b})}
    _common(shape, node, branches)
    if "object" in shape["types"]:
        (obj,) = [b for b in branches if b.get("type") == "object"]
        extra = obj.get("additionalProperties")
        shape["unknown"] = ("kept" if extra is True else "pruned" if extra is False else
                            {"map of": _model_shape(extra, defs)} if isinstance(extra, dict) else
                            "ignored (extra= is not set on the model)")
        shape["properties"] = {k: _model_shape(v, defs) for k, v in (obj.get("properties") or {}).items()}
        shape["required"] = sorted(obj.get("required") or [])
    if "array" in shape["types"]:
        (arr,) = [b for b in branches if b.get("type") == "array"]
        shape["items"] = _model_shape(arr["items"], defs)
    return shape


def _flatten(node: dict[str, Any], defs: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The alternatives of a pydantic node: ``$ref`` resolved, nested ``anyOf`` flattened, ``null`` dropped
    (an optional field is "may be absent", which the CRD says by leaving it out of ``required``)."""
    if "$ref" in node:
        yield from _flatten(defs[node["$ref"].rsplit("/", 1)[1]], defs)
    elif "anyOf" in node:
        for branch in node["anyOf"]:
            yield from _flatten(branch, defs)
    elif node.get("type") != "null":
        yield node


def _common(shape: dict[str, Any], node: dict[str, Any], branches: list[dict[str, Any]]) -> None:
    for source in (node, *branches):
        for key in BOUNDS:
            if key in source:
                shape.setdefault("bounds", {})[key] = source[key]
        if source.get("format") == "date-time":
            shape["format"] = "date-time"
        if "enum" in source:
            shape["enum"] = sorted(source["enum"])
    if node.get("default") is not None:
        shape["default"] = node["default"]


def differences(expected: dict[str, Any], actual: dict[str, Any], path: str) -> list[str]:
    """Where two canonical shapes differ, as ``path: what`` lines (CRD = expected, model = actual)."""
    out: list[str] = []
    for key in sorted((set(expected) | set(actual)) - {"properties"}):
        if key == "properties":
            continue
        if key == "unknown" and isinstance(expected.get(key), dict) and isinstance(actual.get(key), dict):
            out += differences(expected[key]["map of"], actual[key]["map of"], f"{path}{{*}}")
        elif key == "items" and key in expected and key in actual:
            out += differences(expected[key], actual[key], f"{path}[]")
        elif expected.get(key) != actual.get(key):
            out.append(f"{path}: {key} is {expected.get(key)!r} in the CRD, {actual.get(key)!r} in the model")
    crd_props, model_props = expected.get("properties") or {}, actual.get("properties") or {}
    for name in sorted(set(crd_props) - set(model_props)):
        out.append(f"{path}.{name}: in the CRD, missing from the model")
    for name in sorted(set(model_props) - set(crd_props)):
        out.append(f"{path}.{name}: in the model, not in the CRD")
    for name in sorted(set(crd_props) & set(model_props)):
        out += differences(crd_props[name], model_props[name], f"{path}.{name}")
    return out


def compare(crd_node: dict[str, Any], model_schema: dict[str, Any], path: str) -> list[str]:
    expected = _crd_shape(crd_node)
    actual = _model_shape(model_schema, model_schema.get("$defs") or {})
    # The status object's default ({observedGeneration: 0}) belongs to the resource, checked below.
    expected.pop("default", None)
    return differences(expected, actual, path)


# --------------------------------------------------------------------------- 1. drift


@pytest.mark.parametrize("kind,part", [(k, p) for k in MODELS for p in ("spec", "status")])
def test_the_models_equal_the_crds(kind: str, part: str) -> None:
    node = crd_schema(kind)["properties"][part]
    schema = MODELS[kind][part].model_json_schema(by_alias=True)
    assert compare(node, schema, f"{kind}.{part}") == []


@pytest.mark.parametrize("kind", MODELS)
def test_the_resources_have_the_crds_top_level_fields_and_status_default(kind: str) -> None:
    root = crd_schema(kind)
    schema = RESOURCES[kind].model_json_schema(by_alias=True)
    assert set(schema["properties"]) == set(root["properties"])
    assert sorted(schema["required"]) == sorted(root["required"])
    (version,) = crd(kind)["spec"]["versions"]
    assert (contract.GROUP, contract.VERSION) == (crd(kind)["spec"]["group"], version["name"])
    names = crd(kind)["spec"]["names"]
    plural = {"ModelVersion": contract.MODELVERSION_PLURAL, "ABTest": contract.ABTEST_PLURAL}[kind]
    assert (names["kind"], names["plural"]) == (kind, plural)
    assert schema["properties"]["apiVersion"]["const"] == contract.API_VERSION
    assert schema["properties"]["kind"]["const"] == kind
    # A resource whose status the operator never wrote reads as the CRD's status default.
    spec = {"ModelVersion": {"model": {"name": "iris", "version": "1"}},
            "ABTest": {"variants": [{"modelVersion": "a", "weight": 100}, {"modelVersion": "b"}]}}[kind]
    status = RESOURCES[kind].model_validate({"spec": spec}).model_dump(by_alias=True, exclude_none=True)["status"]
    assert status == root["properties"]["status"]["default"]


def test_the_enums_are_the_crds() -> None:
    mv = crd_schema("ModelVersion")["properties"]
    assert [p.value for p in api.ModelVersionPhase] == mv["status"]["properties"]["phase"]["enum"]
    condition = mv["status"]["properties"]["conditions"]["items"]["properties"]["status"]
    assert [s.value for s in api.ConditionStatus] == condition["enum"]
    analysis = mv["spec"]["properties"]["rollout"]["properties"]["analysis"]["properties"]
    assert [p.value for p in api.NoDataPolicy] == analysis["noData"]["enum"]
    ro = mv["status"]["properties"]["rollout"]["properties"]
    assert [p.value for p in api.RolloutPhase] == ro["phase"]["enum"]
    assert [k.value for k in api.RolloutKind] == ro["kind"]["enum"]
    assert [o.value for o in api.RolloutOutcome] == ro["finalPhase"]["enum"]
    assert [v.value for v in api.CheckVerdict] == ro["analysis"]["items"]["properties"]["verdict"]["enum"]


def test_the_rollout_bounds_are_the_planners() -> None:
    """The ``maxItems`` / ``maxLength`` of ``status.rollout`` are the bounds the planner cuts to."""
    from modelpilot.operator import diagnosis, rollout

    ro = crd_schema("ModelVersion")["properties"]["status"]["properties"]["rollout"]["properties"]
    assert ro["history"]["maxItems"] == rollout.HISTORY_LIMIT
    assert ro["history"]["items"]["properties"]["message"]["maxLength"] == api.HISTORY_MESSAGE_LIMIT
    assert ro["analysis"]["maxItems"] == rollout.MEASUREMENT_LIMIT
    assert ro["reason"]["maxLength"] == api.REASON_LIMIT
    assert ro["canaryProblem"]["maxLength"] == diagnosis.MESSAGE_LIMIT == api.PROBLEM_LIMIT
    spec = crd_schema("ModelVersion")["properties"]["spec"]["properties"]["rollout"]["properties"]
    # Every check of a round and the built-in pod-health; every step index.
    assert rollout.MEASUREMENT_LIMIT == spec["analysis"]["properties"]["checks"]["maxItems"] + 1
    assert ro["step"]["maximum"] == spec["steps"]["maxItems"] - 1


def test_the_enums_are_the_operators_own_values() -> None:
    """The enums of values the CRD leaves free-form are the operator's own constants (until the operator
    uses the enums)."""
    from modelpilot.operator import analysis, rollout

    assert {p.value for p in api.RolloutPhase if p.active} == set(rollout.ACTIVE)
    assert {p.value for p in api.RolloutPhase if p.stepping} == set(rollout.STEPPING)
    assert {v.value for v in api.CheckVerdict} == {analysis.PASS, analysis.FAIL, analysis.NODATA, analysis.ERROR}
    assert set(contract.STEP_ACTIONS) | {"undo"} == {a.value for a in api.RolloutAction}


# ------------------------------------------------------------------ the drift test can fail


def _mv_spec() -> tuple[dict[str, Any], dict[str, Any]]:
    return copy.deepcopy(crd_schema("ModelVersion")["properties"]["spec"]), api.ModelVersionSpec.model_json_schema(
        by_alias=True)


def _drop_crd_field(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    del crd_node["properties"]["serving"]["properties"]["batching"]["properties"]["maxLatencyMs"]


def _add_crd_required(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["rollout"].setdefault("required", []).append("steps")


def _change_crd_enum(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["serving"]["properties"]["imagePullPolicy"]["enum"].append("Sometimes")


def _change_crd_type(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["replicas"]["type"] = "string"


def _change_crd_default(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["rollout"]["properties"]["steps"]["default"] = [50, 100]


def _change_crd_bound(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["replicas"]["maximum"] = 10


def _keep_crd_unknowns(crd_node: dict[str, Any], _: dict[str, Any]) -> None:
    crd_node["properties"]["registry"]["x-kubernetes-preserve-unknown-fields"] = True


def _drop_model_field(_: dict[str, Any], schema: dict[str, Any]) -> None:
    del schema["$defs"]["Cache"]["properties"]["redisUrl"]


def _rename_model_field(_: dict[str, Any], schema: dict[str, Any]) -> None:
    props = schema["$defs"]["Autoscaling"]["properties"]
    props["targetCpuUtilizationPercentage"] = props.pop("targetCPUUtilizationPercentage")


def _change_model_item_type(_: dict[str, Any], schema: dict[str, Any]) -> None:
    schema["$defs"]["Rollout"]["properties"]["steps"]["items"]["type"] = "number"


def _change_model_map_values(_: dict[str, Any], schema: dict[str, Any]) -> None:
    node = schema["$defs"]["Serving"]["properties"]["nodeSelector"]["anyOf"][0]
    node["additionalProperties"] = {"type": "integer"}


@pytest.mark.parametrize("break_it,where", [
    (_drop_crd_field, "spec.serving.batching.maxLatencyMs: in the model, not in the CRD"),
    (_add_crd_required, "spec.rollout: required"),
    (_change_crd_enum, "spec.serving.imagePullPolicy: enum"),
    (_change_crd_type, "spec.replicas: types"),
    (_change_crd_default, "spec.rollout.steps: default"),
    (_change_crd_bound, "spec.replicas: bounds"),
    (_keep_crd_unknowns, "spec.registry: unknown"),
    (_drop_model_field, "spec.serving.cache.redisUrl: in the CRD, missing from the model"),
    (_rename_model_field, "spec.autoscaling.targetCPUUtilizationPercentage: in the CRD, missing"),
    (_change_model_item_type, "spec.rollout.steps[]: types"),
    (_change_model_map_values, "spec.serving.nodeSelector{*}: types"),
])
def test_the_drift_test_names_a_break(break_it: Any, where: str) -> None:
    crd_node, schema = _mv_spec()
    assert compare(crd_node, schema, "spec") == []
    break_it(crd_node, schema)
    found = compare(crd_node, schema, "spec")
    assert any(line.startswith(where) for line in found), found


@pytest.mark.parametrize("kind,path,where", [
    ("ModelVersion", ("phase", "enum"), "status.phase: enum"),
    ("ModelVersion", ("model", "properties", "signatureInputs"), "status.model.signatureInputs: in the model, not"),
    ("ModelVersion", ("conditions", "items", "required"), "status.conditions[]: required"),
    ("ABTest", ("variants", "items", "properties", "accuracy"), "status.variants[].accuracy: in the model, not"),
    ("ABTest", ("comparison", "x-kubernetes-preserve-unknown-fields"), "status.comparison: unknown"),
])
def test_the_drift_test_names_a_break_in_status(kind: str, path: tuple[str, ...], where: str) -> None:
    node = copy.deepcopy(crd_schema(kind)["properties"]["status"])
    schema = MODELS[kind]["status"].model_json_schema(by_alias=True)
    parent = node["properties"]
    for key in path[:-1]:
        parent = parent[key]
    if isinstance(parent[path[-1]], list):
        parent[path[-1]] = parent[path[-1]][:-1]  # one enum value, one required name fewer
    else:
        del parent[path[-1]]
    found = compare(node, schema, "status")
    assert any(line.startswith(where) for line in found), found


def test_the_drift_test_fails_on_a_broken_model() -> None:
    """Not only an edited schema: a model class that differs from the CRD fails the comparison."""

    class Batching(api.Batching):
        max_batch_size: int = 32  # default 64 in the CRD, and the bounds are gone

    class Serving(api.Serving):
        batching: Batching | None = None

    class Spec(api.ModelVersionSpec):
        serving: Serving | None = None
        paused: bool = False  # not in the CRD

    found = compare(crd_schema("ModelVersion")["properties"]["spec"], Spec.model_json_schema(by_alias=True), "spec")
    assert "spec.paused: in the model, not in the CRD" in found
    assert any(line.startswith("spec.serving.batching.maxBatchSize: default is 64 in the CRD, 32") for line in found)
    assert any(line.startswith("spec.serving.batching.maxBatchSize: bounds") for line in found)


def test_what_the_crd_rejects_structurally_the_model_rejects() -> None:
    """The mistakes ``test_crds.test_validator_catches_mistakes`` makes the CRD's schema reject."""
    good = {"model": {"name": "iris", "version": "3"}}
    api.ModelVersionSpec.model_validate(good)
    for bad in [
        {"model": {"name": "iris", "version": 3}},
        {"model": {"version": "3"}},
        {**good, "replicas": -1},
        {**good, "bogus": True},
        {**good, "serving": {"batching": {"maxBatchSize": 5000}}},
        {**good, "serving": {"resources": {"requests": {"cpu": "lots"}}}},
        {**good, "podDisruptionBudget": {"minAvailable": "120%"}},
        {**good, "serving": {"imagePullPolicy": "Sometimes"}},
        {**good, "routing": {"gatewayRef": {"name": "gw"}, "hostnames": ["10.0.0.1"]}},
    ]:
        with pytest.raises(ValidationError):
            api.ModelVersionSpec.model_validate(bad)


def test_the_models_take_and_reject_the_hostnames_the_crds_do() -> None:
    """``routing.hostnames`` of both kinds, against the hostnames ``test_crds`` runs through the CRDs' schema."""
    from test_crds import BAD_HOSTNAMES, GOOD_HOSTNAMES

    gateway = {"gatewayRef": {"name": "gw"}}
    for routing in (api.Routing, api.ABTestRouting):
        assert routing.model_validate(gateway).hostnames is None
        assert routing.model_validate({**gateway, "hostnames": GOOD_HOSTNAMES}).hostnames == GOOD_HOSTNAMES
        routing.model_validate({**gateway, "hostnames": [f"h{i}.example.com" for i in range(16)]})
        with pytest.raises(ValidationError):
            routing.model_validate({**gateway, "hostnames": [f"h{i}.example.com" for i in range(17)]})
        for host in BAD_HOSTNAMES:
            with pytest.raises(ValidationError):
                routing.model_validate({**gateway, "hostnames": [host]})


def test_models_read_camel_case_and_python_names_and_write_camel_case() -> None:
    by_alias = api.ModelVersionSpec.model_validate({"model": {"name": "iris", "alias": "champion"}, "followAlias": True,
                                                    "autoscaling": {"targetCPUUtilizationPercentage": 50}})
    by_name = api.ModelVersionSpec(model=api.ModelRef(name="iris", alias="champion"), follow_alias=True,
                                   autoscaling=api.Autoscaling(target_cpu_utilization_percentage=50))
    assert by_alias == by_name
    assert by_alias.model_dump(by_alias=True, exclude_defaults=True) == {
        "model": {"name": "iris", "alias": "champion"}, "followAlias": True,
        "autoscaling": {"targetCPUUtilizationPercentage": 50}}
    # Defaults as the API server fills them in when the enclosing object is given.
    assert api.Batching() == api.Batching(enabled=True, max_batch_size=64, max_latency_ms=5)
    assert api.Rollout().steps == [10, 25, 50, 100] and api.Rollout().steps is not api.Rollout().steps


def test_status_keeps_undeclared_fields_and_times_are_written_in_the_contracts_format() -> None:
    status = api.ModelVersionStatus.model_validate({
        "phase": "Ready", "previousModel": {"version": "2"}, "kopf": {"progress": {}}, "someHandler": {"ok": 1},
        "rollout": {"phase": "Promoted", "fromANewerOperator": [1]},
        "conditions": [{"type": "Ready", "status": "True", "reason": "Available", "message": "",
                        "lastTransitionTime": "2026-01-05T10:00:00Z"}]})
    dumped = status.model_dump(by_alias=True, exclude_none=True, mode="json")
    assert dumped["previousModel"] == {"version": "2"} and dumped["someHandler"] == {"ok": 1}
    assert dumped["rollout"] == {"phase": "Promoted", "fromANewerOperator": [1]}
    assert dumped["conditions"][0]["lastTransitionTime"] == "2026-01-05T10:00:00Z"
    assert status.conditions and status.conditions[0].status is api.ConditionStatus.TRUE
    with pytest.raises(ValidationError):  # pruned by the API server: an error here
        api.ModelStatus.model_validate({"version": "2", "canaryOf": "1"})
    with pytest.raises(ValidationError):
        api.ModelVersionStatus.model_validate({"phase": "Finished"})


def test_the_action_annotation_format() -> None:
    assert contract.ACTION_ANNOTATION == "modelpilot.io/rollout-action"
    assert contract.parse_action(" promote/7 ") == contract.ActionRequest(api.RolloutAction.PROMOTE, "7")
    assert contract.parse_action("undo") == contract.ActionRequest(api.RolloutAction.UNDO, "")
    assert contract.parse_action("") is None and contract.parse_action("explode/3") is None
    assert contract.format_action("abort", "4") == "abort/4"
    assert contract.format_action(api.RolloutAction.UNDO) == "undo"
    assert contract.parse_action(contract.format_action("pause", "12")) == contract.ActionRequest(
        api.RolloutAction.PAUSE, "12")


def test_the_time_format() -> None:
    from datetime import datetime, timezone

    from modelpilot.operator import rollout

    assert contract.format_time(0) == "1970-01-01T00:00:00Z"
    assert contract.format_time(datetime(2026, 1, 5, 10, 0, 0, 500, tzinfo=timezone.utc)) == "2026-01-05T10:00:00Z"
    assert contract.parse_time("2026-01-05T10:00:00Z") == datetime(2026, 1, 5, 10, tzinfo=timezone.utc).timestamp()
    assert rollout.fmt_time(1.0) == contract.format_time(1.0)
    with pytest.raises(ValueError):
        contract.parse_time("2026-01-05T10:00:00+00:00")


def test_the_old_names_are_the_contracts() -> None:
    from modelpilot import kubectl
    from modelpilot.operator import abtest, builders, handlers, kube, reconcile, rollout

    assert builders.API_GROUP == kube.GROUP == handlers.GROUP == kubectl.GROUP == contract.GROUP
    assert builders.API_VERSION == contract.API_VERSION
    assert kube.VERSION == handlers.VERSION == kubectl.VERSION == contract.VERSION
    assert handlers.PLURAL == kubectl.PLURAL == contract.MODELVERSION_PLURAL
    assert builders.SELECTOR_LABEL == contract.SELECTOR_LABEL and abtest.ABTEST_LABEL == contract.ABTEST_LABEL
    assert (builders.VERSION_LABEL, builders.TRACK_LABEL) == (contract.VERSION_LABEL, contract.TRACK_LABEL)
    assert rollout.ACTION_ANNOTATION == reconcile.ACTION_ANNOTATION == kubectl.ACTION_ANNOTATION
    assert rollout.ACTION_ANNOTATION == contract.ACTION_ANNOTATION
    assert tuple(kubectl.STEP_ACTIONS) == contract.STEP_ACTIONS
    assert (builders.SERVING_PORT, builders.GRPC_PORT) == (contract.SERVING_PORT, contract.GRPC_PORT)


# --------------------------------------------------------------------------- 2. everything we build parses


def _documents(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d]


@pytest.mark.parametrize("path", sorted((ROOT / "examples").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_parses(path: Path) -> None:
    docs = [d for d in _documents(path) if d.get("kind") in RESOURCES]
    assert docs, f"{path.name} has no ModelVersion or ABTest"
    for doc in docs:
        RESOURCES[doc["kind"]].model_validate(doc)


def _doc_examples() -> list[dict[str, Any]]:
    text = (ROOT / "docs" / "api.md").read_text()
    return [d for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S) for d in yaml.safe_load_all(block)
            if isinstance(d, dict) and d.get("kind") in RESOURCES]


def test_the_examples_in_the_api_reference_parse() -> None:
    examples = _doc_examples()
    assert {d["kind"] for d in examples} == set(RESOURCES)
    for doc in examples:
        RESOURCES[doc["kind"]].model_validate(doc)


#: The operator-side test modules (test_crds builds invalid bodies on purpose; the serving tests build none).
SCANNED = sorted({*TESTS.glob("test_operator_*.py"), TESTS / "test_serving_contract.py",
                  TESTS / "test_argocd_health.py", TESTS / "test_kubectl_plugin.py"})
#: Keys of a status, not a spec: a dict with one of them is not taken for a spec.
STATUS_KEYS = {"split", "phase", "conditions", "observedGeneration", "readyReplicas", "previousModel", "winner"}


def _body_kind(value: Any) -> str | None:
    """``ModelVersion`` / ``ABTest`` for a whole body, ``spec:<kind>`` for a bare spec, else None."""
    if not isinstance(value, dict):
        return None
    if value.get("kind") in RESOURCES and "spec" in value:
        return str(value["kind"])
    if STATUS_KEYS & set(value):
        return None
    model = value.get("model")
    if isinstance(model, dict) and "name" in model and set(model) <= {"name", "version", "alias"}:
        return "spec:ModelVersion"
    variants = value.get("variants")
    if isinstance(variants, list) and variants and all(isinstance(v, dict) and "modelVersion" in v for v in variants):
        return "spec:ABTest"
    return None


def _built_bodies() -> list[tuple[str, str, dict[str, Any]]]:
    """Every dict literal and ``*body(...)`` / ``model_version(...)`` / ``ab_test(...)`` call in the scanned
    test modules that evaluates, in its module's namespace, to a ModelVersion / ABTest body or spec, named
    ``file:function:line``. Expressions that need a function's locals are skipped."""
    found: list[tuple[str, str, dict[str, Any]]] = []
    for path in SCANNED:
        tree = ast.parse(path.read_text())
        module = importlib.import_module(path.stem)
        for top in tree.body:
            scope = top.name if isinstance(top, (ast.FunctionDef, ast.ClassDef)) else "<module>"
            for node in ast.walk(top):
                if not (isinstance(node, ast.Dict) or isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
                        and (node.func.id.endswith("body") or node.func.id in ("model_version", "ab_test"))):
                    continue
                try:
                    value = eval(compile(ast.Expression(node), str(path), "eval"), vars(module))  # noqa: S307
                except Exception:  # a local name, or a call that needs a fixture
                    continue
                kind = _body_kind(value)
                if kind:
                    found.append((f"{path.name}:{scope}:{node.lineno}", kind, copy.deepcopy(value)))
    return found


BUILT = _built_bodies()


def test_the_scan_finds_the_bodies_the_tests_build() -> None:
    where = {w.split(":")[0] for w, _, _ in BUILT}
    assert {"test_operator_paths.py", "test_serving_contract.py", "test_argocd_health.py",
            "test_operator_builders.py"} <= where, where
    kinds = {k for _, k, _ in BUILT}
    assert {"ModelVersion", "ABTest", "spec:ModelVersion", "spec:ABTest"} <= kinds, kinds
    assert len(BUILT) >= 30, len(BUILT)


@pytest.mark.parametrize("where,kind,body", BUILT, ids=[w for w, _, _ in BUILT])
def test_every_body_the_tests_build_parses(where: str, kind: str, body: dict[str, Any]) -> None:
    model = MODELS[kind.removeprefix("spec:")]["spec"] if kind.startswith("spec:") else RESOURCES[kind]
    model.model_validate(body)  # a body the CRD would reject is a test to fix, not to excuse


def test_what_the_reconciler_writes_parses() -> None:
    """Plain path, canary start and step, promotion; then a rollback: the whole ModelVersion after each
    reconcile — status included, so nothing the operator writes would be pruned or rejected."""
    import test_operator_paths as paths

    seen: list[dict[str, Any]] = []

    def check(kube: Any) -> None:
        parsed = api.ModelVersion.model_validate(kube.body)
        seen.append(parsed.model_dump(by_alias=True, exclude_none=True, mode="json"))

    for action in ("promote", "abort"):
        kube = paths.FakeKube(paths.mv_body("1", rollout=paths.ROLLOUT))
        paths._member_of_abtest(kube)
        rec = paths.reconciler(kube, paths.mlflow({"1": "run1", "2": "run2"}))
        paths.run(kube, rec)
        check(kube)
        paths._edit(kube, version="2")
        for _ in range(2):
            paths.run(kube, rec)
            check(kube)
        paths._edit(kube, action=f"{action}/2")
        for _ in range(2):
            paths.run(kube, rec)
            check(kube)
    phases = {s["status"].get("rollout", {}).get("phase") for s in seen}
    assert {"Progressing", "Promoted", "RolledBack"} <= phases, phases
    assert all(s["status"]["model"]["version"] for s in seen)


def test_what_the_abtest_reconciler_writes_parses() -> None:
    """Both providers, every variant Ready; then a variant missing: the whole ABTest after each reconcile."""
    from modelpilot.operator.abtest_reconcile import ABTestReconciler
    from modelpilot.operator.gateways import MirrorStyles
    from modelpilot.operator.settings import OperatorSettings

    ready = {"model": {"name": "iris", "version": "3"}, "observedGeneration": 1, "conditions": [
        {"type": "Ready", "status": "True", "reason": "Available", "message": "",
         "lastTransitionTime": "2026-01-05T10:00:00Z"}]}

    class Kube:
        def __init__(self, names: list[str]) -> None:
            self.bodies = {n: {"metadata": {"name": n, "namespace": "ml"}, "spec": {"replicas": 2}, "status": ready}
                           for n in names}
            self.status: dict[str, Any] = {}

        async def read_model_version(self, namespace: str, name: str) -> dict[str, Any] | None:
            return copy.deepcopy(self.bodies.get(name))

        async def apply(self, manifest: dict[str, Any]) -> dict[str, Any]:
            return manifest

        async def read_gateway(self, namespace: str, name: str) -> dict[str, Any] | None:
            return None  # the Gateway is not there: mirroring takes the standard form

        async def read_gateway_class(self, name: str) -> dict[str, Any] | None:
            return None

        async def patch_status(self, namespace: str, name: str, status: dict[str, Any], plural: str = "") -> bool:
            self.status = copy.deepcopy(status)
            return True

    class Models:
        def __init__(self, kube: Kube) -> None:
            self.kube, self.settings = kube, OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"})
            self.mirror_styles = MirrorStyles(kube)

        async def reconcile_latest(self, *args: Any, **kwargs: Any) -> None:
            return None

    replicas: dict[str, Any] = {"variants": [{"name": "a", "modelVersion": "iris-a", "weight": 75},
                                             {"name": "b", "modelVersion": "iris-b", "weight": 25}]}
    gateway: dict[str, Any] = {
        "variants": [{"name": "a", "modelVersion": "iris-a", "weight": 90}, {"modelVersion": "iris-b", "weight": 10},
                     {"name": "s", "modelVersion": "iris-c", "shadow": True}],
        "routing": {"gatewayRef": {"name": "gw"}, "headerPinning": {}, "sticky": {"header": "x-user-id"}},
        "autoPromote": True}
    phases: set[str | None] = set()
    for spec, present in ((replicas, ["iris-a", "iris-b"]), (gateway, ["iris-a", "iris-b", "iris-c"]),
                          (gateway, ["iris-a"])):
        kube = Kube(present)
        body = {"apiVersion": contract.API_VERSION, "kind": contract.ABTEST_KIND,
                "metadata": {"name": "iris-ab", "namespace": "ml", "uid": "u", "generation": 1}, "spec": spec}
        asyncio.run(ABTestReconciler(Models(kube)).reconcile_read(copy.deepcopy(body), measure=False))  # type: ignore[arg-type]
        parsed = api.ABTest.model_validate({**body, "status": kube.status})
        phases.add(parsed.status.phase)
        if len(present) > 1:
            assert parsed.status.variants and len(parsed.status.variants) == len(spec["variants"])
    assert phases <= {p.value for p in api.ABTestPhase} and len(phases) >= 2, phases
