"""Typed API of ``modelpilot.io/v1alpha1``: pydantic models of the ModelVersion and ABTest spec and status,
and the enums of their phases, verdicts, actions and conditions.

The top layer of the operator's domain (``api ← domain ← render ← reconcile ← adapters``): pydantic and
``contract`` only, no I/O. ``crds/*.yaml`` stay the single source of the schema; these models mirror
them field by field — the same camelCase names (``alias_generator=to_camel``; a Python name works too),
the same required fields, defaults, enums, types and bounds — and ``tests/unit/test_api_contract.py``
compares each model's JSON schema with its CRD's ``openAPIV3Schema``, so neither can change alone.

Objects the CRD prunes are ``extra="forbid"`` (a field the API server would drop is an error here);
objects with ``x-kubernetes-preserve-unknown-fields`` are ``extra="allow"`` (``status`` keeps the
framework's bookkeeping, ``status.rollout`` what a newer operator wrote) or a free-form ``dict``
(``spec.analysis`` of an ABTest, ``status.comparison``, ``env[].valueFrom``, ``affinity``).

What the models do not check: the CEL rules (``x-kubernetes-validations``, e.g. "exactly one of
``model.version`` / ``model.alias``", "weights add up to 100"); the API server does, at admission.

The reconcilers parse a body's spec into these models once, where it enters (``reconcile.Reconciler.reconcile``,
``abtest_reconcile.ABTestReconciler.reconcile``), and hand the typed spec down; ``given`` tells an optional spec
object written empty from one that was filled in.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal, TypeGuard, TypeVar

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer
from pydantic.alias_generators import to_camel

from modelpilot.operator import contract
from modelpilot.operator.contract import RolloutAction

__all__ = [
    "ABTest", "ABTestConditionType", "ABTestPhase", "ABTestRouting", "ABTestSpec", "ABTestStatus", "Analysis",
    "AnalysisCheck", "Autoscaling", "Batching", "Cache", "CheckVerdict", "Condition", "ConditionStatus",
    "ConditionType", "CredentialsSecretRef", "EnvVar", "GatewayRef", "HeaderPinning", "HistoryEntry",
    "ImagePullPolicy", "Measurement", "ModelRef", "ModelStatus", "ModelVersion", "ModelVersionPhase",
    "ModelVersionSpec", "ModelVersionStatus", "NoDataPolicy", "PodDisruptionBudget", "Registry", "Resources",
    "Rollout", "RolloutAction", "RolloutKind", "RolloutOutcome", "RolloutPhase", "RolloutStatus",
    "RoundVerdict", "Routing", "Serving", "Sticky", "TaintEffect", "Toleration", "TolerationOperator",
    "TrackReplicas", "Variant", "VariantStatus", "WriteBack", "given",
]

# --------------------------------------------------------------------------- enums


class ModelVersionPhase(StrEnum):
    """``ModelVersion.status.phase`` (an enum in the CRD: any other value is rejected). It agrees with the
    kstatus conditions: a phase the operator (or the kubelet) is still working on or retrying — ``Resolving``,
    ``Deploying``, ``Retrying``, ``Progressing`` — has ``Reconciling=True``; ``Failed`` is the one phase that
    waits for someone's action (a version to register, a spec or Secret to fix), and has ``Stalled=True``."""

    PENDING = "Pending"
    RESOLVING = "Resolving"
    DEPLOYING = "Deploying"
    READY = "Ready"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    RETRYING = "Retrying"
    FAILED = "Failed"
    ROLLED_BACK = "RolledBack"


class RolloutPhase(StrEnum):
    """``ModelVersion.status.rollout.phase`` (an enum in the CRD): ``Progressing`` → (``Paused``) →
    ``Promoting`` → ``Promoted``, or → ``RollingBack`` → ``RolledBack`` / ``Cancelled``."""

    PROGRESSING = "Progressing"
    PAUSED = "Paused"
    PROMOTING = "Promoting"
    ROLLING_BACK = "RollingBack"
    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    CANCELLED = "Cancelled"
    #: Written by the reconciler (not the planner) over a ``RolledBack`` rollout once the spec moved on from
    #: the rejected version: the rejection no longer applies.
    SUPERSEDED = "Superseded"

    @property
    def active(self) -> bool:
        """Whether the operator is still moving traffic or pods (``rollout.ACTIVE``)."""
        return self in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED, RolloutPhase.PROMOTING,
                        RolloutPhase.ROLLING_BACK)

    @property
    def stepping(self) -> bool:
        """Whether steps are taken, so manual step actions apply (``rollout.STEPPING``)."""
        return self in (RolloutPhase.PROGRESSING, RolloutPhase.PAUSED)


class RolloutOutcome(StrEnum):
    """``ModelVersion.status.rollout.finalPhase``: the phase a ``Promoting`` / ``RollingBack`` rollout ends in."""

    PROMOTED = "Promoted"
    ROLLED_BACK = "RolledBack"
    CANCELLED = "Cancelled"


class RolloutKind(StrEnum):
    """``ModelVersion.status.rollout.kind``: a canary of a new version, or ``modelpilot undo``."""

    CANARY = "Canary"
    UNDO = "Undo"


class ABTestPhase(StrEnum):
    """``ABTest.status.phase``. Not an enum in the CRD yet (a string of at most 64 characters), so
    ``ABTestStatus.phase`` stays a ``str``; these are the values the operator writes."""

    PENDING = "Pending"
    RUNNING = "Running"
    CONCLUDED = "Concluded"
    PROMOTED = "Promoted"
    DEGRADED = "Degraded"
    FAILED = "Failed"


class CheckVerdict(StrEnum):
    """The result of one analysis check in one round (``status.rollout.analysis``)."""

    PASS = "Pass"
    FAIL = "Fail"
    NO_DATA = "NoData"
    ERROR = "Error"


class RoundVerdict(StrEnum):
    """The verdict of one analysis round: any Fail fails, Errors are inconclusive, NoData follows
    ``spec.rollout.analysis.noData`` (``Hold`` waits)."""

    PASS = "Pass"
    FAIL = "Fail"
    INCONCLUSIVE = "Inconclusive"
    HOLD = "Hold"


class NoDataPolicy(StrEnum):
    """``spec.rollout.analysis.noData``."""

    HOLD = "hold"
    INCONCLUSIVE = "inconclusive"
    FAIL = "fail"


class ConditionStatus(StrEnum):
    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class ConditionType(StrEnum):
    """Condition types of a ModelVersion (``Ready``, ``Reconciling``, ``Stalled`` are kstatus')."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    RESOLVED = "Resolved"
    REGISTRY_WRITE_BACK = "RegistryWriteBack"


class ABTestConditionType(StrEnum):
    """Condition types of an ABTest."""

    READY = "Ready"
    RECONCILING = "Reconciling"
    STALLED = "Stalled"
    ROUTING_LIMITED = "RoutingLimited"


class ImagePullPolicy(StrEnum):
    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class TolerationOperator(StrEnum):
    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    ALL = ""
    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


# --------------------------------------------------------------------------- shared types

#: A time as the operator writes it (``contract.TIME_FORMAT``); any RFC 3339 time is accepted.
Time = Annotated[datetime, PlainSerializer(contract.format_time, return_type=str, when_used="json")]

_DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
_DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_HEADER = r"^[A-Za-z0-9!#$%&'*+.^_`|~-]+$"
_QUANTITY = (r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)"
             r"|(\.[0-9]+))))?$")

#: A Gateway API ``Hostname`` (HTTPRoute ``spec.hostnames[]``): a lowercase DNS name, optionally with a leading
#: ``*.`` wildcard label; no port, no trailing dot. Its last label must hold a letter, so an IP address (which
#: Gateway API forbids but its own pattern lets through) is rejected here too.
_HOSTNAME = r"^(\*\.)?([a-z0-9]([-a-z0-9]*[a-z0-9])?\.)*([a-z0-9][-a-z0-9]*)?[a-z]([-a-z0-9]*[a-z0-9])?$"
Hostname = Annotated[str, Field(min_length=1, max_length=253, pattern=_HOSTNAME)]
#: At most this many ``routing.hostnames`` (Gateway API's own limit on an HTTPRoute).
HOSTNAMES_LIMIT = 16

#: A resource quantity (``500m``, ``2``, ``512Mi``).
Quantity = Annotated[int, Field(ge=0)] | Annotated[str, Field(max_length=64, pattern=_QUANTITY)]
#: A PodDisruptionBudget bound: a number of pods or ``"N%"``.
IntOrPercent = Annotated[int, Field(ge=0)] | Annotated[str, Field(pattern=r"^(100|[1-9]?[0-9])%$")]


class _Spec(BaseModel):
    """A spec object: unknown fields are errors (the API server prunes them)."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              protected_namespaces=())


class _Status(BaseModel):
    """A declared status object without preserve-unknown-fields: what the API server would prune is an error."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              protected_namespaces=())


class _OpenStatus(BaseModel):
    """A status object with ``x-kubernetes-preserve-unknown-fields``: unknown fields are kept."""

    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="allow",
                              protected_namespaces=())


class GatewayRef(_Spec):
    """A Gateway API Gateway to attach an HTTPRoute to."""

    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]
    namespace: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)] | None = None
    section_name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)] | None = None


class Condition(_Status):
    """One condition, in the standard Kubernetes ``metav1.Condition`` shape."""

    type: Annotated[str, Field(max_length=316, pattern=(
        r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?"
        r"[A-Za-z0-9])$"))]
    status: ConditionStatus
    observed_generation: Annotated[int, Field(ge=0)] | None = None
    last_transition_time: Time
    reason: Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")]
    message: Annotated[str, Field(max_length=32768)]


# --------------------------------------------------------------------------- ModelVersion spec


class ModelRef(_Spec):
    """``spec.model``: a registered model and exactly one of version or alias (CEL)."""

    name: Annotated[str, Field(min_length=1, max_length=256)]
    version: Annotated[str, Field(max_length=20)] | None = None
    alias: Annotated[str, Field(max_length=255)] | None = None


class CredentialsSecretRef(_Spec):
    name: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]


class Registry(_Spec):
    """``spec.registry``: per-resource MLflow connection (operator-wide defaults when absent)."""

    tracking_uri: Annotated[str, Field(max_length=2048)] | None = None
    credentials_secret_ref: CredentialsSecretRef | None = None


class Resources(_Spec):
    requests: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None
    limits: Annotated[dict[str, Quantity], Field(max_length=16)] | None = None


class EnvVar(_Spec):
    """One environment variable; ``valueFrom`` is a Kubernetes EnvVarSource, passed through."""

    name: Annotated[str, Field(min_length=1, max_length=256, pattern=r"^[ -<>-~]+$")]
    value: Annotated[str, Field(max_length=32768)] | None = None
    value_from: dict[str, Any] | None = None


class Toleration(_Spec):
    key: Annotated[str, Field(max_length=317)] | None = None
    operator: TolerationOperator | None = None
    value: Annotated[str, Field(max_length=63)] | None = None
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None


class Batching(_Spec):
    enabled: bool = True
    max_batch_size: Annotated[int, Field(ge=1, le=4096)] = 64
    max_latency_ms: Annotated[int, Field(ge=0, le=1000)] = 5


class Cache(_Spec):
    enabled: bool = False
    max_entries: Annotated[int, Field(ge=1)] = 10000
    ttl_seconds: Annotated[int, Field(ge=1)] = 300
    redis_url: Annotated[str, Field(max_length=2048)] = ""


class Serving(_Spec):
    """``spec.serving``: how the serving pods run."""

    image: Annotated[str, Field(min_length=1, max_length=1024)] | None = None
    image_pull_policy: ImagePullPolicy | None = None
    resources: Resources | None = None
    env: Annotated[list[EnvVar], Field(max_length=100)] | None = None
    node_selector: Annotated[dict[str, Annotated[str, Field(max_length=63)]], Field(max_length=64)] | None = None
    tolerations: Annotated[list[Toleration], Field(max_length=32)] | None = None
    affinity: dict[str, Any] | None = None
    batching: Batching | None = None
    cache: Cache | None = None


class Autoscaling(_Spec):
    enabled: bool = False
    min_replicas: Annotated[int, Field(ge=1, le=1000)] = 1
    max_replicas: Annotated[int, Field(ge=1, le=1000)] = 5
    target_cpu_utilization_percentage: Annotated[int, Field(ge=1, le=1000, alias="targetCPUUtilizationPercentage")] = 70


class PodDisruptionBudget(_Spec):
    enabled: bool = False
    min_available: IntOrPercent | None = None
    max_unavailable: IntOrPercent | None = None


class Routing(_Spec):
    """``ModelVersion.spec.routing``: route through a Gateway (HTTPRoute ``<name>``), for ``hostnames`` when
    given (the route's ``spec.hostnames``; absent or empty: every hostname of the listener)."""

    gateway_ref: GatewayRef
    hostnames: Annotated[list[Hostname], Field(max_length=HOSTNAMES_LIMIT)] | None = None


class AnalysisCheck(_Spec):
    """One check: a built-in (``error-rate``, ``latency-p99``, ``accuracy``, ``prediction-shift``) or a
    custom PromQL template, with its thresholds."""

    name: Annotated[str, Field(max_length=63)]
    query: Annotated[str, Field(max_length=2000)] | None = None
    max: float | None = None
    min: float | None = None
    max_delta: float | None = None
    min_delta: float | None = None
    max_ratio: float | None = None
    slack: float | None = None


class Analysis(_Spec):
    """``spec.rollout.analysis``; the operator's defaults apply to what is left out."""

    enabled: bool = True
    interval: Annotated[str, Field(max_length=8, pattern=r"^[0-9]+[smh]$")] | None = None
    min_samples: Annotated[int, Field(ge=0, le=100000000)] | None = None
    no_data: NoDataPolicy | None = None
    failure_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    inconclusive_limit: Annotated[int, Field(ge=0, le=100)] | None = None
    checks: Annotated[list[AnalysisCheck], Field(max_length=20)] | None = None


class WriteBack(_Spec):
    enabled: bool = False
    promote_alias: Annotated[str, Field(max_length=255, pattern=r"^[A-Za-z0-9_-]+$")] | None = None


class Rollout(_Spec):
    """``spec.rollout``: the canary rollout of a new resolved version."""

    steps: Annotated[list[Annotated[int, Field(ge=1, le=100)]], Field(min_length=1, max_length=20)] = [10, 25, 50, 100]
    step_interval_seconds: Annotated[int, Field(ge=1, le=86400)] = 60
    progress_deadline_seconds: Annotated[int, Field(ge=1, le=86400)] = 600
    shadow_seconds: Annotated[int, Field(ge=0, le=86400)] | None = None
    max_surge: (Annotated[int, Field(ge=0, le=1000)] | Annotated[str, Field(pattern=r"^[0-9]{1,4}%$")]
                | None) = None
    analysis: Analysis | None = None
    write_back: WriteBack | None = None


class ModelVersionSpec(_Spec):
    """``ModelVersion.spec``: which model to serve and how."""

    routing: Routing | None = None
    model: ModelRef
    follow_alias: bool = False
    replicas: Annotated[int, Field(ge=0, le=1000)] = 1
    registry: Registry | None = None
    serving: Serving | None = None
    autoscaling: Autoscaling | None = None
    pod_disruption_budget: PodDisruptionBudget | None = None
    rollout: Rollout | None = None


# --------------------------------------------------------------------------- ModelVersion status


class ModelStatus(_Status):
    """``status.model``: the version resolved in MLflow and served."""

    name: str | None = None
    version: str | None = None
    alias: str | None = None
    run_id: str | None = None
    artifact_uri: str | None = None
    source: str | None = None
    flavor: str | None = None
    signature: str | None = None
    signature_inputs: int | None = None
    signature_truncated: bool | None = None
    resolved_at: Time | None = None


#: Bounds of ``status.rollout`` (``maxItems`` / ``maxLength`` in the CRD), applied by the planner (``rollout``):
#: the last decisions kept, the length of each one's message, the checks of one analysis round
#: (``spec.rollout.analysis.checks`` has at most 20, plus the built-in ``pod-health``), the reason kept.
HISTORY_LIMIT = 20
HISTORY_MESSAGE_LIMIT = 500
MEASUREMENT_LIMIT = 21
REASON_LIMIT = 1000
#: ``status.rollout.handledAction`` holds an acted-on annotation value, ``<action>/<version>`` (a version
#: number of the canary or the serving version), so a short one.
ACTION_VALUE_LIMIT = 64
#: ``status.rollout.canaryProblem``: a diagnosis message (``diagnosis.MESSAGE_LIMIT``).
PROBLEM_LIMIT = 1000


class TrackReplicas(_Status):
    """``status.rollout.replicas``: the replicas each track is asked for now."""

    stable: Annotated[int, Field(ge=0)]
    canary: Annotated[int, Field(ge=0)]


class Measurement(_Status):
    """One check of the latest analysis round (``status.rollout.analysis[]``, ``analysis.Measurement.as_status``).
    ``value``, ``baseline`` and ``samples`` are null when there was nothing to measure (nullable in the CRD:
    nulls inside a list are stored as written)."""

    check: Annotated[str, Field(max_length=63)]
    verdict: CheckVerdict
    value: float | None = None
    baseline: float | None = None
    threshold: str | None = None
    samples: float | None = None
    query: str | None = None
    message: str | None = None
    stored_baseline: bool | None = None


class HistoryEntry(_Status):
    """One decision of the rollout (``status.rollout.history[]``)."""

    time: Time
    step: Annotated[int, Field(ge=0)]
    weight: Annotated[int, Field(ge=0, le=100)]
    effective_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    decision: Annotated[str, Field(max_length=64)]
    message: Annotated[str, Field(max_length=HISTORY_MESSAGE_LIMIT)]


class RolloutStatus(_OpenStatus):
    """``ModelVersion.status.rollout``: the whole state of the current or last rollout, the planner's
    (``rollout.plan``) input and output. Open (``extra="allow"``, preserve-unknown-fields in the CRD), so a
    field a newer operator wrote survives a downgrade; the known fields are typed and bounded.

    Which fields are *set* matters, not only their values: the status is written with a JSON merge patch, where
    a field written as null removes the stored one and a field left out keeps it. ``rollout.start`` sets every
    field (unused ones to None) so a new rollout clears the last one's record; the reconciler writes
    ``model_dump(mode="json", by_alias=True, exclude_unset=True)`` (``reconcile.rollout_patch``)."""

    phase: RolloutPhase | None = None
    kind: RolloutKind | None = None
    stable_version: str | None = None
    canary_version: str | None = None
    canary_model: ModelStatus | None = None
    step: Annotated[int, Field(ge=0, le=19)] | None = None
    weight: Annotated[int, Field(ge=0, le=100)] | None = None
    effective_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    replicas: TrackReplicas | None = None
    weight_warning: str | None = None
    started_at: Time | None = None
    step_requested_at: Time | None = None
    step_started_at: Time | None = None
    canary_restarts: Annotated[int, Field(ge=0)] | None = None
    failures: Annotated[int, Field(ge=0)] | None = None
    inconclusive: Annotated[int, Field(ge=0)] | None = None
    analysis: Annotated[list[Measurement], Field(max_length=MEASUREMENT_LIMIT)] | None = None
    baselines: dict[str, float] | None = None
    history: Annotated[list[HistoryEntry], Field(max_length=HISTORY_LIMIT)] | None = None
    reason: Annotated[str, Field(max_length=REASON_LIMIT)] | None = None
    rejected_version: str | None = None
    finished_at: Time | None = None
    final_phase: RolloutOutcome | None = None
    canary_problem: Annotated[str, Field(max_length=PROBLEM_LIMIT)] | None = None
    shadow: bool | None = None
    route_weight: Annotated[int, Field(ge=0, le=100)] | None = None
    route_switched_at: Time | None = None
    handled_action: Annotated[str, Field(max_length=ACTION_VALUE_LIMIT)] | None = None


class ModelVersionStatus(_OpenStatus):
    """``ModelVersion.status``, written by the operator. Undeclared fields (``kopf``'s per-handler results)
    are kept as extras, as the API server keeps them. ``gatewayRoute`` is written as null to remove it
    (merge patch), so it is nullable."""

    observed_generation: int | None = None
    phase: ModelVersionPhase | None = None
    model: ModelStatus | None = None
    previous_model: ModelStatus | None = None
    replicas: int | None = None
    ready_replicas: int | None = None
    conditions: list[Condition] | None = None
    rollout: RolloutStatus | None = None
    gateway_route: Annotated[str, Field(max_length=253)] | None = None
    kopf: dict[str, Any] | None = None


# --------------------------------------------------------------------------- ABTest


class Variant(_Spec):
    """One arm of the experiment; ``name`` defaults to ``modelVersion``."""

    name: Annotated[str, Field(min_length=1, max_length=63, pattern=_DNS_LABEL)] | None = None
    model_version: Annotated[str, Field(min_length=1, max_length=253, pattern=_DNS_SUBDOMAIN)]
    weight: Annotated[int, Field(ge=0, le=100)] = 0
    shadow: bool = False


class HeaderPinning(_Spec):
    header: Annotated[str, Field(min_length=1, max_length=256, pattern=_HEADER)] = contract.VARIANT_HEADER


class Sticky(_Spec):
    header: Annotated[str, Field(min_length=1, max_length=256, pattern=_HEADER)]


class ABTestRouting(_Spec):
    """``ABTest.spec.routing``: the Gateway provider when ``gatewayRef`` is set, else replica ratio.
    ``hostnames`` become the HTTPRoute's (Gateway provider only)."""

    gateway_ref: GatewayRef | None = None
    hostnames: Annotated[list[Hostname], Field(max_length=HOSTNAMES_LIMIT)] | None = None
    header_pinning: HeaderPinning | None = None
    sticky: Sticky | None = None


class ABTestSpec(_Spec):
    variants: Annotated[list[Variant], Field(min_length=2, max_length=10)]
    routing: ABTestRouting | None = None
    analysis: dict[str, Any] | None = None
    auto_promote: bool = False


class VariantStatus(_Status):
    """Live routing and measurements of one variant (``status.variants[]``)."""

    name: str | None = None
    model_version: str | None = None
    version: str | None = None
    shadow: bool | None = None
    weight: int | None = None
    requests: int | None = None
    error_rate: float | None = None
    p99_latency_seconds: float | None = None
    replicas: int | None = None
    accuracy: float | None = None


class ABTestStatus(_OpenStatus):
    """``ABTest.status``. ``phase`` is a plain string in the CRD (values: ``ABTestPhase``)."""

    observed_generation: int | None = None
    phase: Annotated[str, Field(max_length=64)] | None = None
    winner: Annotated[str, Field(max_length=63)] | None = None
    split: str | None = None
    variants: list[VariantStatus] | None = None
    conditions: list[Condition] | None = None
    kopf: dict[str, Any] | None = None
    comparison: dict[str, Any] | None = None


# --------------------------------------------------------------------------- reading a parsed spec

_Part = TypeVar("_Part", bound=BaseModel)


def given(part: _Part | None) -> TypeGuard[_Part]:
    """Whether an optional spec object is there with at least one field written in it.

    An empty object (``batching: {}``, ``rollout: {}``) counts as absent, as it always did for the operator;
    the API server never delivers one where the CRD has defaults, since it writes them in at admission."""
    return part is not None and bool(part.model_fields_set)


# --------------------------------------------------------------------------- whole resources


class _Resource(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True, extra="forbid",
                              protected_namespaces=())

    api_version: Literal["modelpilot.io/v1alpha1"] = "modelpilot.io/v1alpha1"
    metadata: dict[str, Any] = {}


class ModelVersion(_Resource):
    """A whole ModelVersion. A status not written yet is the CRD's default, ``{observedGeneration: 0}``."""

    kind: Literal["ModelVersion"] = "ModelVersion"
    spec: ModelVersionSpec
    status: ModelVersionStatus = Field(default_factory=lambda: ModelVersionStatus(observed_generation=0))


class ABTest(_Resource):
    """A whole ABTest. A status not written yet is the CRD's default, ``{observedGeneration: 0}``."""

    kind: Literal["ABTest"] = "ABTest"
    spec: ABTestSpec
    status: ABTestStatus = Field(default_factory=lambda: ABTestStatus(observed_generation=0))
