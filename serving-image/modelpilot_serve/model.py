"""The one predict core: load an MLflow model, turn protocol input into model input, predict.

Where it sits: below the protocol adapters (`oip.py` for Open Inference
Protocol v2, `invocations.py` for MLflow's scoring protocol) and above MLflow.
Both adapters produce a `ModelInput` through the constructors here and call
`ServedModel.predict`, so the two protocols can never disagree about what a
model returns. Batching, caching and feedback plug in between the adapters
and `predict` (see `runner.py`); they see only `ModelInput` values.

Two execution paths:

* fast path — sklearn flavor, a column signature with only numeric columns:
  the raw estimator's predict function runs on a float64 numpy matrix, with
  no pandas and no MLflow schema enforcement per request. It is only kept if
  it agrees with the pyfunc path on the model's own input example (or on a
  probe row when there is none), so it can never silently change answers.
* pyfunc path — everything else, with MLflow's own parsing and schema
  enforcement, so semantics match `mlflow models serve` exactly.

The validation gate (`validate`) scores the model's logged input example
through the same entry point `/invocations` uses; the server reports ready
only after it passed.

MLflow is imported lazily (inside `load_model`), so the HTTP server is
listening and answering liveness probes while the heavy imports run.
"""

from __future__ import annotations

import io
import json
import logging
import os
import time
import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from .errors import BadRequest, ServeError, Unprocessable, shorten
from .logs import event

if TYPE_CHECKING:  # pragma: no cover - typing only
    import pandas as pd

    from .settings import ServeSettings

log = logging.getLogger(__name__)

# MLflow column types the fast path can feed as float64 without changing values.
_FLOAT_TYPES = frozenset({"double", "float"})
_INT_TYPES = frozenset({"long", "integer"})
_FAST_TYPES = _FLOAT_TYPES | _INT_TYPES
# The numpy dtype MLflow's schema enforcement accepts without casting, per column type.
_PROBE_DTYPES = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}
# The four JSON input formats of MLflow's scoring protocol.
SCORING_FORMATS = ("dataframe_split", "dataframe_records", "instances", "inputs")


# --------------------------------------------------------------------------- inputs


@dataclass(frozen=True, slots=True)
class MatrixInput:
    """Fast-path input: float64 rows × columns, columns in `ServedModel.fast_columns` order.

    This is the shape a batcher concatenates: stacking many requests is one
    `np.vstack` and one estimator call.
    """

    matrix: np.ndarray

    @property
    def rows(self) -> int:
        return int(self.matrix.shape[0])


@dataclass(frozen=True, slots=True)
class PyfuncInput:
    """Anything `PyFuncModel.predict` accepts (DataFrame, ndarray, dict, …) plus params."""

    data: Any
    params: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        try:
            return len(self.data)
        except TypeError:
            return 1


ModelInput = MatrixInput | PyfuncInput


# --------------------------------------------------------------------------- signature


@dataclass(frozen=True, slots=True)
class IOSpec:
    """One input or output of a signature: a named column or a (named) tensor."""

    name: str | None
    type: str  # MLflow column type ("double", "long", "string", …) or tensor dtype
    required: bool = True
    shape: tuple[int, ...] | None = None  # tensors only

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "type": self.type, "required": self.required}
        if self.shape is not None:
            doc["shape"] = list(self.shape)
        return doc


@dataclass(frozen=True, slots=True)
class SignatureInfo:
    """The model's MLflow signature, reduced to what serving needs."""

    kind: Literal["columns", "tensors"]
    inputs: tuple[IOSpec, ...]
    outputs: tuple[IOSpec, ...]
    has_params: bool
    raw: dict[str, Any]
    # Derived once (they are read on every request).
    input_names: tuple[str, ...] = field(init=False)
    named_columns: bool = field(init=False)
    required_names: tuple[str, ...] = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(s.name for s in self.inputs if s.name is not None)
        object.__setattr__(self, "input_names", names)
        object.__setattr__(self, "named_columns", self.kind == "columns" and len(names) == len(self.inputs) > 0)
        object.__setattr__(
            self, "required_names", tuple(s.name for s in self.inputs if s.name is not None and s.required)
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "params": self.raw.get("params"),
        }


def _specs(schema: Any) -> tuple[Literal["columns", "tensors"], tuple[IOSpec, ...]]:
    if schema is None:
        return "columns", ()
    if schema.is_tensor_spec():
        return "tensors", tuple(
            IOSpec(name=s.name, type=str(s.type), required=getattr(s, "required", True), shape=tuple(s.shape))
            for s in schema.inputs
        )
    return "columns", tuple(
        IOSpec(name=s.name, type=_type_name(s.type), required=getattr(s, "required", True))
        for s in schema.inputs
    )


def _type_name(t: Any) -> str:
    # DataType enums have .name ("double"); Array/Object/Map types render via str().
    return str(getattr(t, "name", t))


def _signature_info(signature: Any) -> SignatureInfo | None:
    if signature is None:
        return None
    kind, inputs = _specs(signature.inputs)
    _, outputs = _specs(signature.outputs)
    return SignatureInfo(
        kind=kind,
        inputs=inputs,
        outputs=outputs,
        has_params=signature.params is not None,
        raw=signature.to_dict(),
    )


# --------------------------------------------------------------------------- the model


@dataclass
class ServedModel:
    """A loaded model and the one place predictions are made."""

    uri: str
    local_path: str
    flavor: str
    pyfunc: Any  # mlflow.pyfunc.PyFuncModel
    signature: SignatureInfo | None
    # The /invocations payload MLflow logged with the model (serving_input_example.json).
    serving_example: dict[str, Any] | None
    # The raw logged input example (input_example.json) as JSON, for metadata.
    input_example: Any
    estimator: Any = None  # the raw sklearn estimator, when the flavor is sklearn
    predict_fn_name: str = "predict"
    classes: tuple[Any, ...] | None = None
    # Set when the fast path is on: the estimator's method and the column order it wants.
    fast_fn: Any = None
    fast_columns: tuple[str, ...] = ()
    # Column positions taking signature order to fast order; None when they are the same.
    sig_to_fast: list[int] | None = None
    int_columns: np.ndarray | None = None  # positions (in fast order) of integer columns
    mlflow_version: str = ""
    model_uuid: str | None = None  # MLmodel's model_uuid: identifies the artifact even without a version

    # ---- metadata

    @property
    def fast_path(self) -> bool:
        return self.fast_fn is not None

    def describe(self) -> dict[str, Any]:
        return {
            "flavor": self.flavor,
            "fast_path": self.fast_path,
            "signature": self.signature.to_json() if self.signature else None,
            "input_example": self.input_example,
            "predict_fn": self.predict_fn_name,
            "classes": list(self.classes) if self.classes is not None else None,
        }

    # ---- input constructors shared by the protocol adapters

    def from_scoring_payload(self, payload: dict[str, Any]) -> ModelInput:
        """An MLflow scoring-protocol JSON document (already decoded) → model input."""
        if not isinstance(payload, dict):
            raise BadRequest(
                "the JSON body must be an object with one of the keys " + ", ".join(SCORING_FORMATS)
            )
        params = payload.get("params")
        formats = [k for k in SCORING_FORMATS if k in payload]
        unknown = [k for k in payload if k not in SCORING_FORMATS and k != "params"]
        if len(formats) != 1 or unknown:
            got = ", ".join(map(repr, payload)) or "none"
            raise BadRequest(
                "the JSON body must contain exactly one of "
                + ", ".join(SCORING_FORMATS)
                + f" (plus optional 'params'); got keys: {got}"
            )
        if params is not None and not isinstance(params, dict):
            raise BadRequest("'params' must be a JSON object")
        fmt = formats[0]
        value = payload[fmt]
        self._check_columns(_payload_columns(fmt, value))
        params = self._params(params)
        if self.fast_path and params is None:
            matrix = self._fast_from_json(fmt, value)
            if matrix is not None:
                return MatrixInput(matrix)
        # Anything the fast path does not take goes through MLflow's own parser,
        # so its semantics and error messages are MLflow's.
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        try:
            data = infer_and_parse_data({fmt: value}, self.pyfunc.metadata.get_input_schema())
        except MlflowException as exc:
            raise BadRequest(_mlflow_message(exc)) from None
        return PyfuncInput(data, params)

    def from_csv(self, body: bytes) -> ModelInput:
        """A CSV document with a header row → model input."""
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import parse_csv_input

        try:
            frame = parse_csv_input(io.StringIO(body.decode("utf-8")), self.pyfunc.metadata.get_input_schema())
        except UnicodeDecodeError as exc:
            raise BadRequest(f"CSV body is not valid UTF-8: {exc}") from None
        except MlflowException as exc:
            raise BadRequest(_name_csv_column(_mlflow_message(exc), body)) from None
        self._check_columns([str(c) for c in frame.columns])
        return self.from_frame(frame)

    def _check_columns(self, names: list[str] | None) -> None:
        """Unknown or missing columns are the client's mistake: say which, as v2 does.

        MLflow itself drops unknown columns silently, which hides typos in
        column names until predictions look wrong.
        """
        sig = self.signature
        if names is None or sig is None or not sig.named_columns:
            return
        known = sig.input_names
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest(f"unknown column(s) {unknown}; the model's columns are {list(known)}")
        given = set(names)
        missing = [n for n in sig.required_names if n not in given]
        if missing:
            raise BadRequest(f"missing column(s) {missing}; the model's columns are {list(known)}")

    def from_frame(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> ModelInput:
        params = self._params(params)
        if self.fast_path and params is None:
            matrix = self._fast_from_frame(frame)
            if matrix is not None:
                return MatrixInput(matrix)
        return PyfuncInput(frame, params)

    def from_signature_matrix(self, matrix: np.ndarray, params: dict[str, Any] | None = None) -> ModelInput:
        """A 2-D array whose columns follow the *signature's* input order (OIP v2 single tensor)."""
        params = self._params(params)
        if self.signature is None or not self.signature.named_columns:
            return PyfuncInput(matrix, params)
        if self.fast_path and params is None and matrix.dtype.kind in "fiu":
            if self.sig_to_fast is not None:
                matrix = matrix[:, self.sig_to_fast]
            checked = self._checked(matrix)
            if checked is not None:
                return MatrixInput(checked)
        import pandas as pd

        return PyfuncInput(pd.DataFrame(matrix, columns=list(self.signature.input_names)), params)

    def from_columns(self, columns: dict[str, np.ndarray], params: dict[str, Any] | None = None) -> ModelInput:
        """Named 1-D arrays of equal length (OIP v2 one-input-per-column) → model input."""
        params = self._params(params)
        if self.fast_path and params is None and all(c in columns for c in self.fast_columns):
            arrays = [columns[c] for c in self.fast_columns]
            if all(a.dtype.kind in "fiu" for a in arrays):
                checked = self._checked(np.column_stack(arrays))
                if checked is not None:
                    return MatrixInput(checked)
        import pandas as pd

        return PyfuncInput(pd.DataFrame(columns), params)

    def from_tensors(self, data: Any, params: dict[str, Any] | None = None) -> ModelInput:
        """An ndarray or dict of ndarrays for tensor-signature (or signature-less) models."""
        return PyfuncInput(data, self._params(params))

    # ---- predict

    def predict(self, inp: ModelInput) -> Any:
        """Score one input. Client-caused failures become `ServeError`s; bugs propagate."""
        from mlflow.exceptions import MlflowException

        try:
            if isinstance(inp, MatrixInput):
                return self.fast_fn(inp.matrix)
            if inp.params is not None:
                return self.pyfunc.predict(inp.data, params=inp.params)
            return self.pyfunc.predict(inp.data)
        except MlflowException as exc:
            if exc.get_http_status_code() < 500:  # type: ignore[no-untyped-call]
                raise BadRequest(_mlflow_message(exc)) from None
            raise
        except (ValueError, TypeError, KeyError, IndexError) as exc:
            # Well-formed input the model refused (NaN, wrong dtype deep in a
            # pipeline, 0 rows): the client can fix it, so it is not a 5xx.
            raise Unprocessable(f"the model could not score the input: {shorten(str(exc), 1000)}") from None

    # ---- fast-path conversions (None = "not for the fast path", never an error)

    def _fast_from_json(self, fmt: str, value: Any) -> np.ndarray | None:
        cols = self.fast_columns
        try:
            if fmt == "dataframe_split":
                if not isinstance(value, dict) or set(value) - {"columns", "data", "index"}:
                    return None
                names = value.get("columns")
                data = value.get("data")
                if not isinstance(names, list) or not isinstance(data, list) or len(set(names)) != len(names):
                    return None
                arr = np.asarray(data)
                if arr.ndim != 2 or arr.shape[1] != len(names):
                    return None
                if tuple(names) != cols:
                    position = {n: i for i, n in enumerate(names)}
                    arr = arr[:, [position[c] for c in cols]]  # KeyError → missing column → None
                return self._checked(arr)
            if fmt in ("dataframe_records", "instances"):
                if not isinstance(value, list) or not value or not isinstance(value[0], dict):
                    return None
                return self._checked(np.asarray([[rec[c] for c in cols] for rec in value]))
            if fmt == "inputs":
                if not isinstance(value, dict):
                    return None
                arrays = [np.asarray(value[c]) for c in cols]
                if any(a.ndim != 1 for a in arrays):
                    return None
                return self._checked(np.column_stack(arrays))
        except (KeyError, TypeError, ValueError, IndexError):
            # Missing columns, ragged rows, non-dict records: MLflow's parser
            # produces the error message the client expects.
            return None
        return None

    def _fast_from_frame(self, frame: pd.DataFrame) -> np.ndarray | None:
        try:
            sub = frame[list(self.fast_columns)]
        except KeyError:
            return None
        if not all(dt.kind in "fiu" for dt in sub.dtypes):
            return None
        return self._checked(sub.to_numpy(dtype=np.float64))

    def _checked(self, arr: np.ndarray) -> np.ndarray | None:
        # Only real numbers reach the estimator: bools, strings, None (object)
        # and empty inputs go the pyfunc way and get MLflow's type checks.
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != len(self.fast_columns):
            return None
        if arr.dtype.kind not in "fiu":
            return None
        x = arr.astype(np.float64, copy=False)
        if self.int_columns is not None and arr.dtype.kind == "f":
            sub = x[:, self.int_columns]
            whole = sub == np.floor(sub)  # False for NaN and inf too
            if not whole.all():
                # MLflow's parser would truncate 20.5 to 20 without a word; an
                # integer column in the signature forbids it, so say which column.
                bad = [self.fast_columns[int(i)] for i, ok in zip(self.int_columns, whole.all(axis=0)) if not ok]
                raise BadRequest(f"column(s) {bad} are integers in the model signature; got non-integer values")
        return x

    def _params(self, params: dict[str, Any] | None) -> dict[str, Any] | None:
        # MLflow only forwards params to models that declare them; passing them
        # to others only produces warnings, so they are dropped here.
        if params and self.signature is not None and self.signature.has_params:
            return params
        return None


def _name_csv_column(message: str, body: bytes) -> str:
    """pandas says "in column 0"; say which column that is."""
    import re

    found = re.search(r"in column (\d+)", message)
    if not found:
        return message
    header = body.split(b"\n", 1)[0].decode("utf-8", "replace").strip().split(",")
    index = int(found.group(1))
    if index >= len(header):
        return message
    return message.replace(found.group(0), f"{found.group(0)} ({header[index].strip()!r})", 1)


def _payload_columns(fmt: str, value: Any) -> list[str] | None:
    """Column names a scoring payload names, or None when it does not name columns."""
    if fmt == "dataframe_split" and isinstance(value, dict) and isinstance(value.get("columns"), list):
        return [str(c) for c in value["columns"]]
    if fmt in ("dataframe_records", "instances") and isinstance(value, list) and value and all(
        isinstance(r, dict) for r in value
    ):
        names: dict[str, None] = {}
        for record in value:
            names.update(dict.fromkeys(record))
        return [str(n) for n in names]
    if fmt == "inputs" and isinstance(value, dict):
        return [str(k) for k in value]
    return None


def _mlflow_message(exc: Exception) -> str:
    message = getattr(exc, "message", None) or str(exc)
    # "Failed to enforce schema of data '<the whole input>' with schema '…'. Error: X"
    # — the reason is X; the echoed input only bloats responses and logs.
    if message.startswith("Failed to enforce schema") and ". Error: " in message:
        message = "input does not match the model signature: " + message.rsplit(". Error: ", 1)[1]
    return shorten(message)


# --------------------------------------------------------------------------- loading


def load_model(settings: ServeSettings) -> ServedModel:
    """Download (if remote) and load the model named by `settings.model_uri`.

    Raises whatever MLflow raises; the caller turns it into a not-ready reason.
    """
    # Keep MLflow's output inside our JSON log stream: no own handlers, no
    # progress bars. setdefault so an operator can still override them.
    os.environ.setdefault("MLFLOW_CONFIGURE_LOGGING", "false")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    import mlflow.artifacts
    import mlflow.pyfunc

    if settings.tracking_uri:
        mlflow.set_tracking_uri(settings.tracking_uri)
    # One download; both the pyfunc and the raw estimator load from it.
    local_path = mlflow.artifacts.download_artifacts(artifact_uri=settings.model_uri)
    pyfunc = mlflow.pyfunc.load_model(local_path)
    meta = pyfunc.metadata
    flavors = dict(meta.flavors)
    flavor = next((f for f in flavors if f != "python_function"), "python_function")
    predict_fn_name = str(flavors.get("python_function", {}).get("predict_fn") or "predict")

    model = ServedModel(
        uri=settings.model_uri,
        local_path=str(local_path),
        flavor=flavor,
        pyfunc=pyfunc,
        signature=_signature_info(meta.signature),
        serving_example=_read_serving_example(local_path, meta),
        input_example=_read_input_example(local_path, meta),
        predict_fn_name=predict_fn_name,
        mlflow_version=mlflow.__version__,
        model_uuid=getattr(meta, "model_uuid", None),
    )
    if "sklearn" in flavors:
        _attach_sklearn(model)
    return model


def _read_serving_example(local_path: str, meta: Any) -> dict[str, Any] | None:
    info = meta.saved_input_example_info or {}
    name = info.get("serving_input_path")
    if not name:
        return None
    with open(os.path.join(local_path, name), encoding="utf-8") as fh:
        doc = json.load(fh)
    return doc if isinstance(doc, dict) else None


def _read_input_example(local_path: str, meta: Any) -> Any:
    info = meta.saved_input_example_info or {}
    name = info.get("artifact_path")
    if not name:
        return None
    path = os.path.join(local_path, name)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as fh:
        return json.load(fh)


def _attach_sklearn(model: ServedModel) -> None:
    """Find the raw estimator and decide whether the numeric fast path is a candidate."""
    try:
        estimator = model.pyfunc.get_raw_model()
    except Exception:  # older wrappers without get_raw_model: load it directly
        import mlflow.sklearn

        estimator = mlflow.sklearn.load_model(model.local_path)
    model.estimator = estimator
    fn = getattr(estimator, model.predict_fn_name, None)
    classes = getattr(estimator, "classes_", None)
    if model.predict_fn_name == "predict" and classes is not None and np.ndim(classes) == 1:
        model.classes = tuple(np.asarray(classes).tolist())
    sig = model.signature
    if fn is None or sig is None or not sig.named_columns:
        return
    if any(s.type not in _FAST_TYPES or not s.required for s in sig.inputs):
        return
    # Feed columns in the order the estimator was fitted with when it knows it
    # (pyfunc reorders to the signature, which may differ from fit order).
    fitted = getattr(estimator, "feature_names_in_", None)
    names = tuple(str(c) for c in fitted) if fitted is not None else sig.input_names
    if set(names) != set(sig.input_names):
        return
    types = {s.name: s.type for s in sig.inputs}
    ints = [i for i, c in enumerate(names) if types[c] in _INT_TYPES]
    model.fast_columns = names
    if names != sig.input_names:
        model.sig_to_fast = [sig.input_names.index(c) for c in names]
    model.int_columns = np.asarray(ints, dtype=np.intp) if ints else None
    model.fast_fn = fn
    # Estimators fitted on DataFrames warn on every ndarray call; the column
    # order is guaranteed above, so the warning is noise (and costs time).
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


# --------------------------------------------------------------------------- validation gate


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    reason: str
    seconds: float


def validate(model: ServedModel) -> GateResult:
    """Score the model's own logged input example before declaring it ready.

    Also verifies the fast path against pyfunc on the same input and turns the
    fast path off (not the model) if they disagree.
    """
    start = time.perf_counter()
    if model.serving_example is None:
        if model.fast_path:
            _verify_fast_path_on_probe(model)
        return GateResult(True, "model has no logged input example; gate skipped", time.perf_counter() - start)

    # The reference: the payload through MLflow's parser and pyfunc predict.
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    try:
        payload = dict(model.serving_example)
        params = payload.pop("params", None)
        data = infer_and_parse_data(payload, model.pyfunc.metadata.get_input_schema())
        reference = model.predict(PyfuncInput(data, model._params(params)))
    except ServeError as exc:
        return GateResult(False, f"the model failed to score its own input example: {exc}", time.perf_counter() - start)
    except Exception as exc:  # noqa: BLE001 - any failure means "not ready", with the reason
        return GateResult(
            False,
            f"the model failed to score its own input example: {type(exc).__name__}: {shorten(str(exc), 1000)}",
            time.perf_counter() - start,
        )
    if model.fast_path:
        try:
            inp = model.from_scoring_payload(dict(model.serving_example))
            fast = model.predict(inp) if isinstance(inp, MatrixInput) else None
        except Exception as exc:  # noqa: BLE001
            fast, why = None, f"{type(exc).__name__}: {exc}"
        else:
            why = "the example does not take the fast path" if fast is None else "predictions differ"
        if fast is None or not _same(fast, reference):
            _disable_fast_path(model, why)
    return GateResult(True, "the model scored its own input example", time.perf_counter() - start)


def _verify_fast_path_on_probe(model: ServedModel) -> None:
    # No example to compare on: a single all-zeros row is the cheapest input
    # every numeric signature accepts.
    import pandas as pd

    assert model.signature is not None  # the fast path requires one
    probe = np.zeros((1, len(model.fast_columns)))
    frame = pd.DataFrame(
        {s.name: np.zeros(1, dtype=_PROBE_DTYPES[s.type]) for s in model.signature.inputs}
    )
    try:
        fast = model.fast_fn(probe)
        reference = model.pyfunc.predict(frame)
    except Exception as exc:  # noqa: BLE001
        _disable_fast_path(model, f"probe row failed: {type(exc).__name__}: {exc}")
        return
    if not _same(fast, reference):
        _disable_fast_path(model, "predictions differ on the probe row")


def _disable_fast_path(model: ServedModel, why: str) -> None:
    model.fast_fn = None
    event(log, logging.WARNING, "fast path disabled; serving through pyfunc", reason=shorten(why, 500))


def _same(a: Any, b: Any) -> bool:
    try:
        x = np.asarray(a)
        y = np.asarray(b)
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc" and y.dtype.kind in "fc":
            return bool(np.allclose(x, y, rtol=1e-9, atol=0.0, equal_nan=True))
        return bool(np.array_equal(x, y))
    except Exception:  # noqa: BLE001 - incomparable outputs are "not the same"
        return False
