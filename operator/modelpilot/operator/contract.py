"""The CRD contract in one place: API group and kinds, label and annotation keys, the rollout action
annotation, the time format, and the operator ⇄ serving-pod contract (env, ports, paths).

The bottom of the operator's layers, beside ``api`` (the typed spec and status): the standard library
only, no I/O. Every other module takes these names from here; the old module-level names
(``builders.SELECTOR_LABEL``, ``rollout.ACTION_ANNOTATION`` …) are aliases of these.

The serving package (``modelpilot_serve``) never imports the operator (import-linter), so its side of
the pod contract keeps its own copy of the env names and ports (``modelpilot_serve.settings``);
``tests/unit/test_serving_contract.py`` renders a Deployment and starts the server's settings from its
env, and checks that both copies are equal.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from enum import StrEnum

# --------------------------------------------------------------------------- API group, version, kinds

GROUP = "modelpilot.io"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

MODELVERSION_KIND = "ModelVersion"
MODELVERSION_PLURAL = "modelversions"
ABTEST_KIND = "ABTest"
ABTEST_PLURAL = "abtests"

# --------------------------------------------------------------------------- labels

#: On every object of a ModelVersion, and the selector of its Deployments, Services and PDB: its name.
SELECTOR_LABEL = f"{GROUP}/modelversion"
#: On the pod template: the model version a track's pods serve.
VERSION_LABEL = f"{GROUP}/version"
#: On the pod template: ``stable`` or ``canary``; the Service ``<name>`` selects both, so replicas split traffic.
TRACK_LABEL = f"{GROUP}/track"
#: On the serving pods of every non-shadow ABTest variant: the ABTest's name (its stable Service selects it).
ABTEST_LABEL = f"{GROUP}/abtest"
#: Registered model name (label-safe) and MLflow run id (label-safe) on every owned object.
MODEL_LABEL = f"{GROUP}/model"
RUN_ID_LABEL = f"{GROUP}/run-id"
#: The standard "managed by" label and its value on everything the operator renders.
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "modelpilot"

TRACK_STABLE = "stable"
TRACK_CANARY = "canary"

# --------------------------------------------------------------------------- annotations

#: Prefix of the operator framework's (kopf's) own progress and diff-base annotations.
KOPF_ANNOTATION_PREFIX = GROUP
#: Provenance annotations on the pod template: what a pod serves and where it came from.
MODEL_NAME_ANNOTATION = f"{GROUP}/model-name"
MODEL_VERSION_ANNOTATION = f"{GROUP}/model-version"
MODEL_URI_ANNOTATION = f"{GROUP}/model-uri"
RUN_ID_ANNOTATION = f"{GROUP}/run-id"
ARTIFACT_URI_ANNOTATION = f"{GROUP}/artifact-uri"
SOURCE_ANNOTATION = f"{GROUP}/source"
FLAVOR_ANNOTATION = f"{GROUP}/flavor"
TRACKING_URI_ANNOTATION = f"{GROUP}/tracking-uri"
ALIAS_ANNOTATION = f"{GROUP}/alias"

#: Manual rollout actions on a ModelVersion: ``<action>`` or ``<action>/<version>`` (see ``parse_action``),
#: written by ``modelpilot promote|abort|pause|resume|undo`` and acted on once by the operator.
ACTION_ANNOTATION = f"{GROUP}/rollout-action"


class RolloutAction(StrEnum):
    """A manual action asked for through ``ACTION_ANNOTATION``."""

    PROMOTE = "promote"
    ABORT = "abort"
    PAUSE = "pause"
    RESUME = "resume"
    UNDO = "undo"


#: Actions that apply to a stepping rollout (``undo`` applies when no rollout is active).
STEP_ACTIONS: tuple[str, ...] = (RolloutAction.PROMOTE.value, RolloutAction.ABORT.value,
                                 RolloutAction.PAUSE.value, RolloutAction.RESUME.value)


@dataclass(frozen=True)
class ActionRequest:
    """A parsed value of ``ACTION_ANNOTATION``: the action, and the version it is meant for ("" = any)."""

    action: RolloutAction
    version: str = ""

    def format(self) -> str:
        return format_action(self.action, self.version)


def format_action(action: RolloutAction | str, version: str = "") -> str:
    """The annotation value for ``action`` (on ``version``, if given): ``promote/7``, ``undo``."""
    value = RolloutAction(action).value
    return f"{value}/{version}" if version else value


def parse_action(value: str) -> ActionRequest | None:
    """The request in an ``ACTION_ANNOTATION`` value, or None when it is empty or names no known action.

    Surrounding white space is ignored; ``<action>/<version>`` limits the action to that version.
    """
    action, _, version = value.strip().partition("/")
    try:
        return ActionRequest(RolloutAction(action), version.strip())
    except ValueError:
        return None


# --------------------------------------------------------------------------- headers

#: Request header that pins a request to a track of a Gateway-routed canary (``canary`` or ``stable``).
TRACK_HEADER = "x-modelpilot-track"
#: Default of ``ABTest.spec.routing.headerPinning.header``: a request naming a variant goes to it.
VARIANT_HEADER = "x-modelpilot-variant"

# --------------------------------------------------------------------------- time

#: How the operator writes times in status (RFC 3339, UTC, whole seconds): ``2026-01-05T10:00:00Z``.
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def format_time(value: float | datetime) -> str:
    """``value`` (epoch seconds, or a datetime; a naive one is taken as UTC) in ``TIME_FORMAT``."""
    if isinstance(value, datetime):
        moment = value if value.tzinfo is not None else value.replace(tzinfo=timezone.utc)
    else:
        moment = datetime.fromtimestamp(value, timezone.utc)
    return moment.astimezone(timezone.utc).strftime(TIME_FORMAT)


def parse_time(value: str) -> float:
    """Epoch seconds of a time written in ``TIME_FORMAT`` (ValueError for any other form)."""
    return datetime.strptime(value, TIME_FORMAT).replace(tzinfo=timezone.utc).timestamp()


# --------------------------------------------------------------------------- operator ⇄ serving pod

#: The serving container's arguments (the image's entrypoint is ``modelpilot``).
SERVE_ARGS: tuple[str, ...] = ("serve",)
#: Container ports (named) — the server's defaults for ``MODELPILOT_SERVE_PORT`` / ``…_GRPC_PORT``.
SERVING_PORT_NAME, SERVING_PORT = "http", 8080
GRPC_PORT_NAME, GRPC_PORT = "grpc", 8081
#: The Service's HTTP port (the gRPC port keeps its number).
SERVICE_HTTP_PORT = 80
#: Endpoints of the server the pod spec points at.
READY_PATH = "/v2/health/ready"
LIVE_PATH = "/v2/health/live"
METRICS_PATH = "/metrics"
#: Where the server writes why it can never serve (the container's terminationMessagePath default).
TERMINATION_MESSAGE_PATH = "/dev/termination-log"

#: What to serve, always set by the operator: the pinned ``models:/NAME/VERSION``, the tracking server,
#: the registered model name and version, and the variant (the ModelVersion's name; a metrics label).
ENV_MODEL_URI = "MODEL_URI"
ENV_TRACKING_URI = "MLFLOW_TRACKING_URI"
ENV_MODEL_NAME = "MODEL_NAME"
ENV_MODEL_VERSION = "MODEL_VERSION"
ENV_MODEL_VARIANT = "MODEL_VARIANT"
#: Registry credentials: the keys of ``spec.registry.credentialsSecretRef``'s Secret, passed to the pod
#: under the same names (each optional) — read by MLflow's client in the server, not by its settings.
ENV_TRACKING_USERNAME = "MLFLOW_TRACKING_USERNAME"
ENV_TRACKING_PASSWORD = "MLFLOW_TRACKING_PASSWORD"
ENV_TRACKING_TOKEN = "MLFLOW_TRACKING_TOKEN"
CREDENTIAL_KEYS: tuple[str, ...] = (ENV_TRACKING_USERNAME, ENV_TRACKING_PASSWORD, ENV_TRACKING_TOKEN)
#: ``spec.serving.batching`` and ``spec.serving.cache``, as the server's settings.
ENV_BATCHING = "MODELPILOT_SERVE_BATCHING"
ENV_MAX_BATCH_SIZE = "MODELPILOT_SERVE_MAX_BATCH_SIZE"
ENV_MAX_BATCH_LATENCY_MS = "MODELPILOT_SERVE_MAX_BATCH_LATENCY_MS"
ENV_CACHE = "MODELPILOT_SERVE_CACHE"
ENV_CACHE_MAX_ENTRIES = "MODELPILOT_SERVE_CACHE_MAX_ENTRIES"
ENV_CACHE_TTL_SECONDS = "MODELPILOT_SERVE_CACHE_TTL_SECONDS"
ENV_CACHE_REDIS_URL = "MODELPILOT_SERVE_CACHE_REDIS_URL"

#: Every env name the operator sets that the server's own settings read (same names in
#: ``modelpilot_serve.settings``, checked by the serving-contract test).
SERVER_ENV: tuple[str, ...] = (
    ENV_MODEL_URI, ENV_TRACKING_URI, ENV_MODEL_NAME, ENV_MODEL_VERSION, ENV_MODEL_VARIANT,
    ENV_BATCHING, ENV_MAX_BATCH_SIZE, ENV_MAX_BATCH_LATENCY_MS,
    ENV_CACHE, ENV_CACHE_MAX_ENTRIES, ENV_CACHE_TTL_SECONDS, ENV_CACHE_REDIS_URL,
)
