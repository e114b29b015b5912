"""Structural checks of the CustomResourceDefinitions in crds/.

No cluster here: these tests read the YAML and check what can be checked
without an API server - that the files parse, that every field is described
(so `kubectl explain` helps), that the status subresource and kopf's status
storage are there, that printer columns point at real fields, that every CEL
rule explains itself, that lists, maps and strings are bounded (the API server
rejects a CRD whose CEL rules are estimated too costly), and that
docs/api.md stays in step with the schemas. Admission behaviour (the CEL rules
themselves) is exercised against a real kube-apiserver by the cluster tests.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Iterator

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CRD_DIR = ROOT / "crds"
API_DOC = ROOT / "docs" / "api.md"

CRD_FILES = {
    "ModelVersion": CRD_DIR / "modelpilot.io_modelversions.yaml",
    "ABTest": CRD_DIR / "modelpilot.io_abtests.yaml",
}
EXPECTED_NAMES = {
    "ModelVersion": {"plural": "modelversions", "singular": "modelversion", "shortNames": ["mv"]},
    "ABTest": {"plural": "abtests", "singular": "abtest", "shortNames": ["ab"]},
}
# Fields the operator and the serving image are written against: renaming one
# breaks them, so a rename must be deliberate (and this list edited with it).
FIXED_FIELDS = {
    "ModelVersion": [
        "spec.model.name",
        "spec.model.version",
        "spec.model.alias",
        "spec.followAlias",
        "spec.replicas",
        "spec.registry.trackingUri",
        "spec.registry.credentialsSecretRef.name",
        "spec.serving.image",
        "spec.serving.resources",
        "spec.serving.env",
        "spec.serving.batching.maxBatchSize",
        "spec.serving.batching.maxLatencyMs",
        "spec.serving.cache.maxEntries",
        "spec.serving.cache.ttlSeconds",
        "spec.serving.cache.redisUrl",
        "spec.autoscaling.minReplicas",
        "spec.autoscaling.maxReplicas",
        "spec.autoscaling.targetCPUUtilizationPercentage",
        "spec.podDisruptionBudget.minAvailable",
        "spec.podDisruptionBudget.maxUnavailable",
        "spec.rollout.steps",
        "spec.rollout.stepIntervalSeconds",
        "spec.rollout.progressDeadlineSeconds",
        "spec.rollout.analysis",
        "spec.routing.gatewayRef.name",
        "spec.routing.hostnames",
        "status.observedGeneration",
        "status.phase",
        "status.model.name",
        "status.model.version",
        "status.model.alias",
        "status.model.runId",
        "status.model.artifactUri",
        "status.model.source",
        "status.model.flavor",
        "status.model.signature",
        "status.model.resolvedAt",
        "status.replicas",
        "status.readyReplicas",
        "status.conditions",
        "status.rollout",
        "status.kopf",
    ],
    "ABTest": [
        "spec.variants[].name",
        "spec.variants[].modelVersion",
        "spec.variants[].weight",
        "spec.variants[].shadow",
        "spec.routing.gatewayRef.name",
        "spec.routing.gatewayRef.namespace",
        "spec.routing.hostnames",
        "spec.routing.headerPinning.header",
        "spec.routing.sticky.header",
        "spec.analysis",
        "spec.autoPromote",
        "status.observedGeneration",
        "status.phase",
        "status.winner",
        "status.variants[].name",
        "status.variants[].weight",
        "status.variants[].requests",
        "status.variants[].errorRate",
        "status.variants[].p99LatencySeconds",
        "status.conditions",
        "status.kopf",
    ],
}
MODELVERSION_PHASES = [
    "Pending",
    "Resolving",
    "Deploying",
    "Ready",
    "Progressing",
    "Degraded",
    "Retrying",
    "Failed",
    "RolledBack",
]
# Fields of ObjectMeta a printer column may point at (metadata is not part of
# the CRD's own schema).
METADATA_FIELDS = {"name", "namespace", "creationTimestamp", "labels", "annotations", "generation"}

KINDS = list(CRD_FILES)


# --------------------------------------------------------------------------- helpers


def load(kind: str) -> dict[str, Any]:
    with CRD_FILES[kind].open() as f:
        docs = [d for d in yaml.safe_load_all(f) if d is not None]
    assert len(docs) == 1, f"{CRD_FILES[kind].name} must hold exactly one document"
    return docs[0]


def version(crd: dict[str, Any]) -> dict[str, Any]:
    versions = crd["spec"]["versions"]
    assert len(versions) == 1
    return versions[0]


def root_schema(kind: str) -> dict[str, Any]:
    return version(load(kind))["schema"]["openAPIV3Schema"]


def walk(schema: dict[str, Any], path: str = "") -> Iterator[tuple[str, dict[str, Any]]]:
    """Yield (path, node) for every schema node: properties, list items, map values."""
    yield path, schema
    for name, sub in (schema.get("properties") or {}).items():
        yield from walk(sub, f"{path}.{name}" if path else name)
    if isinstance(schema.get("items"), dict):
        yield from walk(schema["items"], f"{path}[]")
    if isinstance(schema.get("additionalProperties"), dict):
        yield from walk(schema["additionalProperties"], f"{path}{{}}")
    for i, sub in enumerate(schema.get("anyOf") or []):
        yield from walk(sub, f"{path}<anyOf{i}>")


def lookup(schema: dict[str, Any], dotted: str) -> dict[str, Any] | None:
    """Find the node of a path such as spec.variants[].weight; None when absent."""
    node: dict[str, Any] | None = schema
    for part in dotted.split("."):
        is_list = part.endswith("[]")
        name = part[:-2] if is_list else part
        node = (node or {}).get("properties", {}).get(name)
        if node is None:
            return None
        if is_list:
            node = node.get("items")
            if node is None:
                return None
    return node


def field(schema: dict[str, Any], dotted: str) -> dict[str, Any]:
    """Like lookup, for fields that must exist."""
    node = lookup(schema, dotted)
    assert node is not None, f"missing field {dotted}"
    return node


def all_rules(kind: str) -> list[tuple[str, dict[str, Any]]]:
    return [
        (path or "<root>", rule)
        for path, node in walk(root_schema(kind))
        for rule in node.get("x-kubernetes-validations") or []
    ]


def is_int_or_string(node: dict[str, Any]) -> bool:
    return bool(node.get("x-kubernetes-int-or-string"))


def validate(value: Any, node: dict[str, Any], path: str = "") -> list[str]:
    """A small OpenAPI v3 structural validator (no CEL): types, required,
    enums, bounds, patterns, unknown fields. Enough to keep examples honest."""
    errors: list[str] = []
    if is_int_or_string(node):
        if isinstance(value, bool) or not isinstance(value, (int, str)):
            return [f"{path}: must be an integer or a string"]
        if isinstance(value, str):
            if "pattern" in node and not re.search(node["pattern"], value):
                errors.append(f"{path}: {value!r} does not match {node['pattern']}")
            if "maxLength" in node and len(value) > node["maxLength"]:
                errors.append(f"{path}: longer than {node['maxLength']}")
        elif "minimum" in node and value < node["minimum"]:
            errors.append(f"{path}: below {node['minimum']}")
        return errors
    typ = node.get("type")
    checks = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
    }
    if typ and not checks[typ](value):
        return [f"{path}: {value!r} is not of type {typ}"]
    if "enum" in node and value not in node["enum"]:
        errors.append(f"{path}: {value!r} not in {node['enum']}")
    if typ in ("integer", "number"):
        if "minimum" in node and value < node["minimum"]:
            errors.append(f"{path}: {value} below {node['minimum']}")
        if "maximum" in node and value > node["maximum"]:
            errors.append(f"{path}: {value} above {node['maximum']}")
    if typ == "string":
        if "minLength" in node and len(value) < node["minLength"]:
            errors.append(f"{path}: shorter than {node['minLength']}")
        if "maxLength" in node and len(value) > node["maxLength"]:
            errors.append(f"{path}: longer than {node['maxLength']}")
        if "pattern" in node and not re.search(node["pattern"], value):
            errors.append(f"{path}: {value!r} does not match {node['pattern']}")
    if typ == "array":
        if "minItems" in node and len(value) < node["minItems"]:
            errors.append(f"{path}: fewer than {node['minItems']} items")
        if "maxItems" in node and len(value) > node["maxItems"]:
            errors.append(f"{path}: more than {node['maxItems']} items")
        for i, item in enumerate(value):
            errors += validate(item, node.get("items", {}), f"{path}[{i}]")
    if typ == "object":
        for req in node.get("required", []):
            if req not in value:
                errors.append(f"{path}.{req}: required")
        if "maxProperties" in node and len(value) > node["maxProperties"]:
            errors.append(f"{path}: more than {node['maxProperties']} entries")
        props = node.get("properties", {})
        extra = node.get("additionalProperties")
        for key, sub in value.items():
            sub_path = f"{path}.{key}" if path else key
            if path == "" and key == "metadata":
                # ObjectMeta is validated by the API server, not the CRD schema.
                if not isinstance(sub, dict):
                    errors.append("metadata: must be an object")
            elif key in props:
                errors += validate(sub, props[key], sub_path)
            elif isinstance(extra, dict):
                errors += validate(sub, extra, sub_path)
            elif not node.get("x-kubernetes-preserve-unknown-fields"):
                errors.append(f"{sub_path}: unknown field")
    return errors


def doc_examples() -> list[dict[str, Any]]:
    text = API_DOC.read_text()
    out = []
    for block in re.findall(r"```yaml\n(.*?)```", text, flags=re.S):
        for doc in yaml.safe_load_all(block):
            if isinstance(doc, dict) and doc.get("kind") in CRD_FILES:
                out.append(doc)
    return out


# --------------------------------------------------------------------------- tests


@pytest.mark.parametrize("kind", KINDS)
def test_crd_identity(kind: str) -> None:
    crd = load(kind)
    assert crd["apiVersion"] == "apiextensions.k8s.io/v1"
    assert crd["kind"] == "CustomResourceDefinition"
    spec = crd["spec"]
    names = spec["names"]
    assert crd["metadata"]["name"] == f"{names['plural']}.modelpilot.io"
    assert spec["group"] == "modelpilot.io"
    assert spec["scope"] == "Namespaced"
    assert names["kind"] == kind
    assert names["listKind"] == f"{kind}List"
    for key, expected in EXPECTED_NAMES[kind].items():
        assert names[key] == expected
    assert names["categories"] == ["modelpilot"]
    v = version(crd)
    assert v["name"] == "v1alpha1"
    assert v["served"] is True and v["storage"] is True


@pytest.mark.parametrize("kind", KINDS)
def test_status_subresource(kind: str) -> None:
    assert version(load(kind))["subresources"] == {"status": {}}


@pytest.mark.parametrize("kind", KINDS)
def test_status_keeps_kopf_storage(kind: str) -> None:
    """kopf keeps handler progress in status.kopf (and handler results under
    status.<handler-id>): pruning either makes handlers re-run forever."""
    status = root_schema(kind)["properties"]["status"]
    assert status["type"] == "object"
    assert status.get("x-kubernetes-preserve-unknown-fields") is True
    kopf = status["properties"]["kopf"]
    assert kopf["type"] == "object"
    assert kopf.get("x-kubernetes-preserve-unknown-fields") is True


@pytest.mark.parametrize("kind", KINDS)
def test_status_defaults_to_not_yet_observed(kind: str) -> None:
    """Before the operator writes status, kstatus (Flux, cli-utils) must read a new resource as
    in progress: an absent status reads "Current". observedGeneration 0 never equals a real
    generation (they start at 1), so the default says "not observed yet" (see the cluster test
    test_a_new_object_reads_as_in_progress_before_the_operator_writes_status)."""
    status = root_schema(kind)["properties"]["status"]
    assert status["default"] == {"observedGeneration": 0}


@pytest.mark.parametrize("kind", KINDS)
def test_every_field_has_a_description(kind: str) -> None:
    schema = root_schema(kind)
    assert schema.get("description", "").strip(), "the root schema needs a description"
    missing = [
        path
        for path, node in walk(schema)
        if path != "metadata"  # the API server forbids anything but type on metadata
        and "<anyOf" not in path
        and not str(node.get("description", "")).strip()
    ]
    assert not missing, f"fields without description: {missing}"


@pytest.mark.parametrize("kind", KINDS)
def test_schema_is_structural(kind: str) -> None:
    """Every node has a type, except int-or-string nodes (whose anyOf branches
    carry it); list-map keys are required fields of the items."""
    problems = []
    for path, node in walk(root_schema(kind)):
        if "<anyOf" in path:
            continue
        if is_int_or_string(node):
            if [b.get("type") for b in node.get("anyOf", [])] != ["integer", "string"]:
                problems.append(f"{path}: int-or-string needs anyOf [integer, string]")
            continue
        if node.get("type") not in {"object", "array", "string", "integer", "number", "boolean"}:
            problems.append(f"{path}: missing or unknown type {node.get('type')!r}")
        if node.get("x-kubernetes-list-type") == "map":
            keys = node.get("x-kubernetes-list-map-keys") or []
            required = node["items"].get("required", [])
            if not keys or any(k not in required for k in keys):
                problems.append(f"{path}: list-map keys {keys} must be required item fields")
    assert not problems, problems


@pytest.mark.parametrize("kind", KINDS)
def test_printer_columns_reference_existing_fields(kind: str) -> None:
    v = version(load(kind))
    schema = v["schema"]["openAPIV3Schema"]
    columns = v["additionalPrinterColumns"]
    assert columns[-1]["name"] == "Age" and columns[-1]["type"] == "date"
    for col in columns:
        json_path = col["jsonPath"]
        assert json_path.startswith("."), json_path
        # Server-side printing shows only the first match of a JSONPath, so a
        # wildcard would silently print one element of a list.
        assert "[*]" not in json_path and "?(" not in json_path, json_path
        dotted = re.sub(r"\[\d+\]", "[]", json_path[1:])
        if dotted.startswith("metadata."):
            assert dotted.split(".", 1)[1] in METADATA_FIELDS, json_path
            continue
        node = lookup(schema, dotted)
        assert node is not None, f"printer column {col['name']} points at missing {json_path}"
        expected = {"string": {"string"}, "integer": {"integer"}, "number": {"number", "integer"},
                    "boolean": {"boolean"}, "date": {"string"}}[col["type"]]
        assert node.get("type") in expected, f"column {col['name']} is {col['type']}, field is {node.get('type')}"
        assert col.get("description") or col["type"] == "date", col["name"]


def test_modelversion_printer_columns() -> None:
    paths = {c["name"]: c["jsonPath"] for c in version(load("ModelVersion"))["additionalPrinterColumns"]}
    assert paths["Model"] == ".spec.model.name"
    assert paths["Version"] == ".status.model.version"
    assert paths["Phase"] == ".status.phase"
    assert paths["Ready"] == ".status.readyReplicas"
    assert paths["Age"] == ".metadata.creationTimestamp"


def test_abtest_printer_columns() -> None:
    paths = {c["name"]: c["jsonPath"] for c in version(load("ABTest"))["additionalPrinterColumns"]}
    assert paths["Split"] == ".status.split"
    assert paths["Phase"] == ".status.phase"
    assert paths["Winner"] == ".status.winner"
    assert paths["Age"] == ".metadata.creationTimestamp"


@pytest.mark.parametrize("kind", KINDS)
def test_every_rule_has_a_message_naming_the_field(kind: str) -> None:
    rules = all_rules(kind)
    assert rules, "expected CEL rules"
    for path, rule in rules:
        assert rule.get("rule", "").strip(), f"{path}: empty rule"
        message = rule.get("message", "")
        assert message.strip(), f"{path}: rule {rule['rule']!r} has no message"
        assert re.search(r"\b(spec|metadata|status)\.", message), f"{path}: message does not name a field: {message!r}"
        assert set(rule) <= {"rule", "message", "messageExpression", "reason", "fieldPath", "optionalOldSelf"}, rule
        if "fieldPath" in rule:
            target = lookup(lookup(root_schema(kind), path) or {}, rule["fieldPath"].lstrip("."))
            assert target is not None, f"{path}: fieldPath {rule['fieldPath']} does not exist"


@pytest.mark.parametrize("kind", KINDS)
def test_rule_messages_are_documented(kind: str) -> None:
    doc = API_DOC.read_text()
    for path, rule in all_rules(kind):
        assert f"`{rule.get('message')}`" in doc, f"{path}: message not listed in docs/api.md: {rule.get('message')!r}"


@pytest.mark.parametrize("kind", KINDS)
def test_spec_fields_are_documented(kind: str) -> None:
    doc = API_DOC.read_text()
    spec = root_schema(kind)["properties"]["spec"]
    missing = [
        f"spec.{path}" if path else "spec"
        for path, node in walk(spec)
        if path
        and not path.endswith("[]")
        and "{}" not in path
        and "<anyOf" not in path
        and f"`spec.{path}`" not in doc
    ]
    assert not missing, f"spec fields missing from docs/api.md: {missing}"


@pytest.mark.parametrize("kind", KINDS)
def test_fixed_field_names(kind: str) -> None:
    schema = root_schema(kind)
    missing = [p for p in FIXED_FIELDS[kind] if lookup(schema, p) is None]
    assert not missing, missing


@pytest.mark.parametrize("kind", KINDS)
def test_spec_is_bounded_for_cel_cost(kind: str) -> None:
    """The API server estimates each CEL rule's worst-case cost from maxItems,
    maxProperties and maxLength, and rejects the CRD when it is too high: keep
    every list, map and string under spec bounded."""
    unbounded = []
    for path, node in walk(root_schema(kind)["properties"]["spec"], "spec"):
        if "<anyOf" in path or node.get("x-kubernetes-preserve-unknown-fields"):
            continue
        typ = node.get("type")
        if typ == "array" and "maxItems" not in node:
            unbounded.append(f"{path}: maxItems")
        if typ == "object" and isinstance(node.get("additionalProperties"), dict) and "maxProperties" not in node:
            unbounded.append(f"{path}: maxProperties")
        if (typ == "string" or is_int_or_string(node)) and "maxLength" not in node and "enum" not in node:
            if not (is_int_or_string(node) and "pattern" in node and "{}" not in path):
                unbounded.append(f"{path}: maxLength")
    assert not unbounded, unbounded


@pytest.mark.parametrize("kind", KINDS)
def test_defaults_satisfy_their_schema(kind: str) -> None:
    found = 0
    for path, node in walk(root_schema(kind)):
        if "default" in node:
            found += 1
            assert not validate(node["default"], node, path), validate(node["default"], node, path)
    assert found


def test_modelversion_schema_details() -> None:
    schema = root_schema("ModelVersion")
    spec = schema["properties"]["spec"]
    assert spec["required"] == ["model"]
    assert field(schema, "spec.model")["required"] == ["name"]
    replicas = field(schema, "spec.replicas")
    assert replicas["default"] == 1 and replicas["minimum"] == 0
    assert field(schema, "status.phase")["enum"] == MODELVERSION_PHASES
    assert field(schema, "status.rollout").get("x-kubernetes-preserve-unknown-fields") is True
    assert field(schema, "spec.rollout.analysis.checks").get("maxItems") == 20  # typed: kubectl explain helps
    steps = field(schema, "spec.rollout.steps")
    assert steps["items"]["minimum"] == 1 and steps["items"]["maximum"] == 100
    assert steps["default"][-1] == 100 and steps["default"] == sorted(set(steps["default"]))
    assert field(schema, "spec.serving.batching.maxBatchSize")["maximum"] == 4096
    assert field(schema, "spec.serving.batching.maxLatencyMs")["maximum"] == 1000
    env = field(schema, "spec.serving.env")
    assert env["x-kubernetes-list-map-keys"] == ["name"] and env["maxItems"] == 100


def test_abtest_schema_details() -> None:
    schema = root_schema("ABTest")
    variants = field(schema, "spec.variants")
    assert variants["minItems"] == 2 and variants["maxItems"] == 10
    assert variants["items"]["required"] == ["modelVersion"]
    weight = field(schema, "spec.variants[].weight")
    assert (weight["minimum"], weight["maximum"]) == (0, 100)
    rules = " ".join(r["rule"] for r in variants["x-kubernetes-validations"])
    assert ".sum() == 100" in rules and "shadow" in rules
    assert "has(w.name) ? w.name : w.modelVersion" in rules
    assert field(schema, "spec.analysis").get("x-kubernetes-preserve-unknown-fields") is True


#: Gateway API hostnames the routes accept, and what they reject (an IP address, a port, a trailing dot,
#: upper case, a bare or inner wildcard, an empty label, a label starting or ending with '-', too long).
GOOD_HOSTNAMES = ["iris.example.com", "*.example.com", "localhost", "a", "api-1.ml.example.com", "x1.io",
                  "a" * 63 + ".b" + "." + "c" * 185]
BAD_HOSTNAMES = ["10.0.0.1", "*.10", "1.2.3", "example.com.", "Example.com", "example.com:8080", "*", "*.*.com",
                 "a.*.com", "a..com", "-a.com", "a-.com", "[::1]", "", "http://example.com", "a" * 250 + ".com"]


@pytest.mark.parametrize("kind", KINDS)
def test_routing_hostnames_are_gateway_api_hostnames(kind: str) -> None:
    """``spec.routing.hostnames`` is HTTPRoute's ``spec.hostnames``: at most 16 Gateway API hostnames."""
    schema = root_schema(kind)
    hostnames = field(schema, "spec.routing.hostnames")
    assert hostnames["type"] == "array" and hostnames["maxItems"] == 16
    assert "minItems" not in hostnames  # empty is allowed: the route then has no hostnames, as when absent
    item = hostnames["items"]
    assert (item["type"], item["minLength"], item["maxLength"]) == ("string", 1, 253)
    for host in GOOD_HOSTNAMES:
        assert not validate(host, item), host
    for host in BAD_HOSTNAMES:
        assert validate(host, item), host
    routing = field(schema, "spec.routing")
    assert not validate({"gatewayRef": {"name": "gw"}, "hostnames": [f"h{i}.example.com" for i in range(16)]}, routing)
    assert validate({"gatewayRef": {"name": "gw"}, "hostnames": [f"h{i}.example.com" for i in range(17)]}, routing)


@pytest.mark.parametrize("kind", KINDS)
def test_conditions_have_the_standard_shape(kind: str) -> None:
    conditions = field(root_schema(kind), "status.conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    item = conditions["items"]
    assert set(item["properties"]) == {
        "type", "status", "reason", "message", "lastTransitionTime", "observedGeneration",
    }
    assert set(item["required"]) == {"type", "status", "reason", "message", "lastTransitionTime"}
    assert item["properties"]["status"]["enum"] == ["True", "False", "Unknown"]
    assert item["properties"]["lastTransitionTime"]["format"] == "date-time"


def test_doc_examples_match_the_schemas() -> None:
    examples = doc_examples()
    assert {e["kind"] for e in examples} == set(CRD_FILES)
    for example in examples:
        assert example["apiVersion"] == "modelpilot.io/v1alpha1"
        errors = validate(example, root_schema(example["kind"]))
        assert not errors, f"{example['kind']} {example['metadata']['name']}: {errors}"


def test_validator_catches_mistakes() -> None:
    """The little validator above is what keeps the doc examples honest: make
    sure it actually rejects things."""
    schema = root_schema("ModelVersion")
    base = {"apiVersion": "modelpilot.io/v1alpha1", "kind": "ModelVersion",
            "metadata": {"name": "x"}, "spec": {"model": {"name": "iris", "version": "3"}}}
    assert not validate(base, schema)
    bad = [
        {"model": {"name": "iris", "version": 3}},
        {"model": {"version": "3"}},
        {"model": {"name": "iris", "version": "3"}, "replicas": -1},
        {"model": {"name": "iris", "version": "3"}, "bogus": True},
        {"model": {"name": "iris", "version": "3"}, "serving": {"batching": {"maxBatchSize": 5000}}},
        {"model": {"name": "iris", "version": "3"}, "serving": {"resources": {"requests": {"cpu": "lots"}}}},
        {"model": {"name": "iris", "version": "3"}, "podDisruptionBudget": {"minAvailable": "120%"}},
        {"model": {"name": "iris", "version": "3"}, "routing": {"gatewayRef": {"name": "gw"}, "hostnames": ["10.0.0.1"]}},
    ]
    for spec in bad:
        assert validate({**base, "spec": spec}, schema), spec
