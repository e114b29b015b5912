"""The one predict core: load an MLflow model, turn protocol input into model input, predict.

Where it sits: below the protocol adapters (`oip.py` for Open Inference
Protocol v2, `invocations.py` for MLflow's scoring protocol) and above MLflow.
Both adapters produce a `ModelInput` through the constructors here and call
`ServedModel.predict`, so the two protocols can never disagree about what a
model returns. Batching, caching and feedback plug in between the adapters
and `predict` (see `runner.py`); they see only `ModelInput` values.

Three kinds of input, three execution paths:

* `MatrixInput`, the native fast path — sklearn, xgboost and lightgbm
  flavors with numeric inputs (a numeric column signature, a 2-D float
  tensor signature, or no signature): the raw model's own predict function
  runs on a float64 numpy matrix, with no pandas and no MLflow schema
  enforcement per request. It is only kept if it agrees with the pyfunc path
  on the model's own input example (or on a probe row when there is none), so
  it can never silently change answers.
* `FrameInput`, the batched pyfunc path — column-signature (or
  signature-less) models with any scalar column types, strings included, and
  any pyfunc: each request is decoded into plain column lists (no pandas per
  request); a batch of requests becomes one DataFrame, MLflow's own type
  casting (`cast_df_types_according_to_schema`) and schema enforcement
  (`PyFuncModel.predict`) run once per batch, and the output is split by
  rows. Batching is kept only if batched and one-by-one scoring agree on the
  model's own example (`validate`).
* `PyfuncInput` — everything else (tensor dicts, array-typed columns, CSV),
  parsed by MLflow's own parser, so semantics match `mlflow models serve`.

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
import math
import os
import time
import warnings
from collections.abc import Callable
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
# MLflow column types whose values are one JSON scalar per row (no arrays, objects or maps).
_SCALAR_TYPES = _FAST_TYPES | frozenset({"string", "boolean", "binary", "datetime"})
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


@dataclass(frozen=True, slots=True)
class FrameInput:
    """Batched-pyfunc input: equal-length columns (lists or 1-D arrays) by name, plus params.

    Decoding a request into this is a transpose in plain Python; the batcher
    concatenates the columns of many requests and `ServedModel.predict_frames`
    builds one DataFrame for all of them.
    """

    columns: dict[str, Any]
    n: int
    params: dict[str, Any] | None = None

    @property
    def rows(self) -> int:
        return self.n

    def batch_key(self) -> tuple[Any, ...]:
        """Inputs batch together only with the same column names and the same params."""
        return (tuple(self.columns), _params_key(self.params))


ModelInput = MatrixInput | FrameInput | PyfuncInput


def _params_key(params: dict[str, Any] | None) -> str | None:
    if params is None:
        return None
    import orjson

    try:
        return orjson.dumps(params, option=orjson.OPT_SORT_KEYS).decode()
    except TypeError:
        return repr(sorted(params.items(), key=lambda kv: kv[0]))


class ModelLoadError(Exception):
    """A model load failure, classified: `permanent` ones are not retried (see state.py)."""

    def __init__(self, message: str, *, permanent: bool) -> None:
        super().__init__(message)
        self.permanent = permanent


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
    name_set: frozenset[str] = field(init=False)  # membership checks stay O(1) for 10,000s of columns
    named_columns: bool = field(init=False)
    required_names: tuple[str, ...] = field(init=False)
    # Every column a scalar MLflow type: requests can be decoded as plain column lists.
    scalar_columns: bool = field(init=False)

    def __post_init__(self) -> None:
        names = tuple(s.name for s in self.inputs if s.name is not None)
        object.__setattr__(self, "input_names", names)
        object.__setattr__(self, "name_set", frozenset(names))
        object.__setattr__(self, "named_columns", self.kind == "columns" and len(names) == len(self.inputs) > 0)
        object.__setattr__(
            self, "required_names", tuple(s.name for s in self.inputs if s.name is not None and s.required)
        )
        object.__setattr__(
            self, "scalar_columns", self.named_columns and all(s.type in _SCALAR_TYPES for s in self.inputs)
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
    estimator: Any = None  # the raw model of a native flavor (sklearn, xgboost, lightgbm)
    predict_fn_name: str = "predict"
    classes: tuple[Any, ...] | None = None
    # Set when the fast path is on: the native predict function and the column order it wants.
    fast_fn: Any = None
    fast_columns: tuple[str, ...] = ()
    # Column positions taking signature order to fast order; None when they are the same.
    sig_to_fast: list[int] | None = None
    int_columns: np.ndarray | None = None  # positions (in fast order) of integer columns
    # Each integer column's MLflow type ("integer" int32, "long" int64), in `int_columns` order: its range.
    int_types: tuple[str, ...] = ()
    # The fast path takes plain matrices (tensor signature or none) rather than named columns.
    fast_tensor: bool = False
    # Named-column fast path: each column's position in `fast_columns` (the v2 lane's lookup).
    fast_positions: dict[str, int] | None = None
    # Batched pyfunc scoring (FrameInput / ndarray inputs): on unless the self-check disagreed.
    batching: bool = True
    mlflow_version: str = ""
    model_uuid: str | None = None  # MLmodel's model_uuid: identifies the artifact even without a version
    # Requirements of the model (requirements.txt) that this environment lacks or has at another version.
    missing_requirements: tuple[str, ...] = ()
    mismatched_requirements: tuple[str, ...] = ()

    # ---- metadata

    @property
    def fast_path(self) -> bool:
        return self.fast_fn is not None

    def describe(self) -> dict[str, Any]:
        return {
            "flavor": self.flavor,
            "fast_path": self.fast_path,
            "batching": self.batching,
            "signature": self.signature.to_json() if self.signature else None,
            "input_example": self.input_example,
            "predict_fn": self.predict_fn_name,
            "classes": list(self.classes) if self.classes is not None else None,
            "missing_requirements": list(self.missing_requirements),
            "mismatched_requirements": list(self.mismatched_requirements),
        }

    # ---- input constructors shared by the protocol adapters

    def from_scoring_payload(self, payload: dict[str, Any], max_columns: int | None = None) -> ModelInput:
        """An MLflow scoring-protocol JSON document (already decoded) → model input.

        `max_columns` bounds the number of columns the payload names (a 400 above it).
        """
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
        rows = self._positional_rows(fmt, value)
        if rows is not None:
            fmt, value = "dataframe_split", rows
        names = _payload_columns(fmt, value)
        if names is not None and max_columns is not None and len(names) > max_columns:
            raise BadRequest(
                f"the request has {len(names)} inputs; this server accepts at most {max_columns} "
                "(MODELPILOT_SERVE_MAX_COLUMNS)"
            )
        # Exactly the fast path's columns (a client sending the model's own column order):
        # nothing unknown, missing or repeated, so the checks below have nothing to find.
        if names is None or self.fast_positions is None or tuple(names) != self.fast_columns:
            if fmt == "dataframe_split" and names is not None and len(set(names)) != len(names):
                dupes = sorted({n for n in names if names.count(n) > 1})
                raise BadRequest(f"duplicate column name(s) {_few(dupes)} in dataframe_split")
            self._check_columns(names)
        params = self._params(params)
        if self.fast_path and params is None:
            matrix = self._fast_from_json(fmt, value)
            if matrix is not None:
                return MatrixInput(matrix)
        if self._frames_ok():
            columns = _json_columns(fmt, value)
            if columns is not None:
                return FrameInput(columns[0], columns[1], params)
        # Anything else goes through MLflow's own parser, so its semantics and
        # error messages are MLflow's.
        from mlflow.exceptions import MlflowException
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        try:
            data = infer_and_parse_data({fmt: value}, self.pyfunc.metadata.get_input_schema())
        except MlflowException as exc:
            raise BadRequest(_mlflow_message(exc)) from None
        if self.fast_path and params is None and self.fast_tensor and isinstance(data, np.ndarray):
            checked = self._fast_tensor(data)
            if checked is not None:
                return MatrixInput(checked)
        return PyfuncInput(data, params)

    def _positional_rows(self, fmt: str, value: Any) -> dict[str, Any] | None:
        """Unnamed rows for a named-column model, as `dataframe_split` with the signature's names; else None.

        `{"inputs": [[5.1, 3.5, 1.4, 0.2]]}` (or `instances`) names no
        columns. MLflow's server turns it into a DataFrame with columns 0..n-1
        and then refuses it ("Model is missing inputs [...]") for any model
        whose signature names its columns, while a v2 `[rows, n]` tensor of
        the same values is read as the columns in signature order. Reading the
        rows the v2 way here keeps the two protocols in agreement; it only
        accepts requests MLflow refuses, so no answer MLflow gives changes.
        Only for signatures of scalar columns: with an array-typed column a
        nested list is that column's value, and MLflow reads it so.
        """
        sig = self.signature
        if fmt not in ("inputs", "instances") or sig is None or not sig.scalar_columns:
            return None
        if not isinstance(value, list) or not value or not all(isinstance(r, list) for r in value):
            return None
        names = list(sig.input_names)
        for i, row in enumerate(value):
            if len(row) != len(names):
                raise BadRequest(
                    f"{fmt!r} row {i} has {len(row)} values; rows without column names must have one value per "
                    f"signature column in signature order ({len(names)}: {_few(names)}), or name the columns "
                    "(dataframe_split, dataframe_records, or 'inputs' as an object of columns)"
                )
        return {"columns": names, "data": value}

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
        column names until predictions look wrong. Linear in the number of
        columns (set lookups), so a 12,000-column request costs microseconds.
        """
        sig = self.signature
        if names is None or sig is None or not sig.named_columns:
            return
        known = sig.name_set
        unknown = [n for n in names if n not in known]
        if unknown:
            raise BadRequest(
                f"unknown column(s) {_few(unknown)}; the model's columns are {_few(list(sig.input_names))}"
            )
        given = set(names)
        missing = [n for n in sig.required_names if n not in given]
        if missing:
            raise BadRequest(
                f"missing column(s) {_few(missing)}; the model's columns are {_few(list(sig.input_names))}"
            )

    def from_frame(self, frame: pd.DataFrame, params: dict[str, Any] | None = None) -> ModelInput:
        params = self._params(params)
        if self.fast_path and params is None and not self.fast_tensor:
            matrix = self._fast_from_frame(frame)
            if matrix is not None:
                return MatrixInput(matrix)
        return PyfuncInput(frame, params)

    def from_signature_matrix(self, matrix: np.ndarray, params: dict[str, Any] | None = None) -> ModelInput:
        """A 2-D array whose columns follow the *signature's* input order (OIP v2 single tensor)."""
        params = self._params(params)
        if self.signature is None or not self.signature.named_columns:
            return self.from_tensors(matrix, params)
        if self.fast_path and params is None and matrix.dtype.kind in "fiu":
            if self.sig_to_fast is not None:
                matrix = matrix[:, self.sig_to_fast]
            checked = self._checked(matrix)
            if checked is not None:
                return MatrixInput(checked)
        names = self.signature.input_names
        if self._frames_ok():
            return FrameInput({n: matrix[:, i] for i, n in enumerate(names)}, int(matrix.shape[0]), params)
        import pandas as pd

        return PyfuncInput(pd.DataFrame(matrix, columns=list(names)), params)

    def from_columns(self, columns: dict[str, np.ndarray], params: dict[str, Any] | None = None) -> ModelInput:
        """Named 1-D arrays of equal length (OIP v2 one-input-per-column) → model input."""
        params = self._params(params)
        if self.fast_path and params is None and not self.fast_tensor and all(c in columns for c in self.fast_columns):
            arrays = [columns[c] for c in self.fast_columns]
            if all(a.dtype.kind in "fiu" for a in arrays):
                checked = self._checked(np.column_stack(arrays))
                if checked is not None:
                    return MatrixInput(checked)
        n = len(next(iter(columns.values()))) if columns else 0
        if self._frames_ok() and n > 0:
            return FrameInput(dict(columns), n, params)
        import pandas as pd

        return PyfuncInput(pd.DataFrame(columns), params)

    def from_tensors(self, data: Any, params: dict[str, Any] | None = None) -> ModelInput:
        """An ndarray or dict of ndarrays for tensor-signature (or signature-less) models."""
        params = self._params(params)
        if self.fast_path and self.fast_tensor and params is None and isinstance(data, np.ndarray):
            checked = self._fast_tensor(data)
            if checked is not None:
                return MatrixInput(checked)
        return PyfuncInput(data, params)

    def _frames_ok(self) -> bool:
        # Plain column lists are only a faithful stand-in for MLflow's parse when
        # every column is one scalar per row (or there is no schema at all).
        sig = self.signature
        return sig is None or sig.scalar_columns

    # ---- predict

    def predict(self, inp: ModelInput) -> Any:
        """Score one input. Client-caused failures become `ServeError`s; bugs propagate."""
        if isinstance(inp, FrameInput):
            return self.predict_frames([inp])
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

    def batch_key(self, inp: ModelInput) -> tuple[Any, ...] | None:
        """Which inputs may share one pyfunc predict: same key. None: this input is scored alone.

        `FrameInput`s batch by columns and params; plain arrays (tensor
        signatures, signature-less models) by trailing shape, dtype and params.
        """
        if isinstance(inp, FrameInput):
            return inp.batch_key()
        if isinstance(inp, PyfuncInput) and isinstance(inp.data, np.ndarray) and inp.data.ndim >= 1:
            return ("array", inp.data.shape[1:], inp.data.dtype.str, _params_key(inp.params))
        return None

    def predict_many(self, inputs: list[Any]) -> Any:
        """One predict for inputs of one batch key; the caller splits the output (`split_output`)."""
        if isinstance(inputs[0], FrameInput):
            return self.predict_frames(inputs)
        data = np.concatenate([i.data for i in inputs]) if len(inputs) > 1 else inputs[0].data
        return self.predict(PyfuncInput(data, inputs[0].params))

    def predict_frames(self, inputs: list[FrameInput]) -> Any:
        """Score several `FrameInput`s (same columns, same params) as one DataFrame.

        MLflow's type casting and schema enforcement run once for all of them;
        the caller splits the output by rows (`split_output`).
        """
        frame = self.frame_of(inputs)
        return self.predict(PyfuncInput(frame, inputs[0].params))

    def frame_of(self, inputs: list[FrameInput]) -> pd.DataFrame:
        """One DataFrame of the inputs' rows, cast to the signature's types as MLflow's parser does.

        Columns whose values already are what the signature asks for (numbers
        for double/float/long/integer, strings for string) are converted while
        the DataFrame is built; only the others go through MLflow's own
        `cast_df_types_according_to_schema`, which sets columns one at a time
        and is quadratic in the number of columns (minutes at 12,000 columns).
        """
        import pandas as pd
        from mlflow.exceptions import MlflowException

        names = list(inputs[0].columns)
        if len(inputs) == 1:
            data = inputs[0].columns
        else:
            data = {n: _concat([i.columns[n] for i in inputs]) for n in names}
        types = {s.name: s.type for s in self.signature.inputs} if self.signature is not None else {}
        try:
            converted: dict[str, Any] = {}
            leftover: list[str] = []
            for n in names:
                arr = _typed_column(data[n], types.get(n), n)
                if arr is None:
                    leftover.append(n)
                    arr = data[n]
                converted[n] = arr
            frame = pd.DataFrame(converted, columns=names)
            schema = self.pyfunc.metadata.get_input_schema()
            if schema is not None and leftover:
                from mlflow.types import Schema
                from mlflow.utils.proto_json_utils import cast_df_types_according_to_schema

                wanted = set(leftover)
                sub_schema = Schema([s for s in schema.inputs if s.name in wanted])
                cast = cast_df_types_according_to_schema(frame[leftover], sub_schema)  # type: ignore[no-untyped-call]
                for n in leftover:
                    frame[n] = cast[n]
        except MlflowException as exc:
            raise BadRequest(_mlflow_message(exc)) from None
        except (ValueError, TypeError, OverflowError) as exc:
            raise BadRequest(f"input does not match the model signature: {shorten(str(exc), 1000)}") from None
        return frame

    # ---- fast-path conversions (None = "not for the fast path", never an error)

    def _fast_from_json(self, fmt: str, value: Any) -> np.ndarray | None:
        if self.fast_tensor:
            # A [rows, n] list of plain numbers: MLflow's parser would make it
            # np.array(value, dtype=float64) for a float64 tensor spec — the same
            # array, without its deep copy and per-element conversion.
            if fmt not in ("instances", "inputs") or not isinstance(value, list):
                return None
            try:
                arr = np.asarray(value)
            except (ValueError, TypeError):
                return None
            if arr.dtype.kind not in "fiu":
                return None  # bools, strings, null: MLflow's parser and its errors
            return self._fast_tensor(arr.astype(np.float64, copy=False))
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

    def _fast_tensor(self, arr: np.ndarray) -> np.ndarray | None:
        # Tensor signatures: only the dtype MLflow would accept unchanged (float64);
        # anything else goes to pyfunc and gets MLflow's own dtype error or cast.
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.dtype != np.float64 or arr.shape[1] != len(self.fast_columns):
            return None
        return arr

    def _checked(self, arr: np.ndarray) -> np.ndarray | None:
        # Only real numbers reach the estimator: bools, strings, None (object)
        # and empty inputs go the pyfunc way and get MLflow's type checks.
        if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] != len(self.fast_columns):
            return None
        if arr.dtype.kind not in "fiu":
            return None
        x = arr.astype(np.float64, copy=False)
        if self.int_columns is not None:
            sub = x[:, self.int_columns]
            if arr.dtype.kind == "f":
                whole = sub == np.floor(sub)  # False for NaN and inf too
                if not whole.all():
                    # MLflow's parser would truncate 20.5 to 20 without a word; an
                    # integer column in the signature forbids it, so say which column.
                    bad = [self.fast_columns[int(i)] for i, ok in zip(self.int_columns, whole.all(axis=0)) if not ok]
                    raise BadRequest(f"column(s) {_few(bad)} are integers in the model signature; "
                                     "got non-integer values")
            # The JSON parser reads an integer beyond 64 bits as a float (2**70 → 1.18e21): a value an int64
            # (or int32) column cannot hold is refused as MLflow's own conversion refuses it, not scored.
            for j, (i, kind) in enumerate(zip(self.int_columns, self.int_types)):
                info = np.iinfo(np.int32 if kind == "integer" else np.int64)
                column = sub[:, j]
                if float(column.min()) < info.min or float(column.max()) > info.max:
                    raise BadRequest(f"column {self.fast_columns[int(i)]!r} ({kind}) has values out of range "
                                     f"[{info.min}, {info.max}]")
        return x

    def _params(self, params: dict[str, Any] | None) -> dict[str, Any] | None:
        # MLflow only forwards params to models that declare them; passing them
        # to others only produces warnings, so they are dropped here.
        if params and self.signature is not None and self.signature.has_params:
            return params
        return None


def split_output(output: Any, sizes: list[int]) -> list[Any] | None:
    """Cut a batched output into one output per request (by row counts), or None if it has no rows.

    ndarrays, DataFrames, Series and lists whose length is the batch's row
    count can be cut; anything else (a scalar, a dict) cannot, and the caller
    scores the requests one by one instead.
    """
    total = sum(sizes)
    import pandas as pd

    frame_like = isinstance(output, (pd.DataFrame, pd.Series))
    if isinstance(output, np.ndarray):
        if output.ndim == 0 or output.shape[0] != total:
            return None
    elif frame_like or isinstance(output, list):
        if len(output) != total:
            return None
    else:
        return None
    parts: list[Any] = []
    start = 0
    for size in sizes:
        end = start + size
        parts.append(output.iloc[start:end].reset_index(drop=True) if frame_like else output[start:end])
        start = end
    return parts


# Signature column type → the dtype MLflow's cast gives a column of plain JSON numbers.
_NUMPY_OF_TYPE = {"double": np.float64, "float": np.float32, "long": np.int64, "integer": np.int32}


def _typed_column(values: Any, mlflow_type: str | None, name: str = "") -> Any:
    """`values` in the dtype MLflow's cast would give them, or None when only MLflow's cast can tell.

    Only unambiguous cases: numbers (no bools, no None) for numeric columns —
    integers only for integer columns, as MLflow would truncate 1.5 — and
    plain strings for string columns. Values an integer or boolean column
    cannot hold (out of range, a fraction, a missing value) are a 400 naming
    the column: numpy's cast would wrap them around silently.
    """
    if mlflow_type is None:
        return values if isinstance(values, np.ndarray) else None
    target = _NUMPY_OF_TYPE.get(mlflow_type)
    if isinstance(values, np.ndarray):
        kind = values.dtype.kind
        if target is not None and mlflow_type in _INT_TYPES and kind in "fiu":
            return _checked_ints(values, target, mlflow_type, name)
        if target is not None and kind in "fiu":
            return values.astype(target, copy=False)
        if mlflow_type == "boolean" and kind == "f" and np.isnan(values).any():
            raise BadRequest(f"column {name!r} is boolean in the model signature; it cannot hold a missing value")
        return None
    if target is not None:
        if mlflow_type in _INT_TYPES:
            if all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in values):
                if not all(-(2**63) <= int(v) < 2**63 for v in values):
                    raise BadRequest(f"column {name!r} ({mlflow_type}) has integers out of range")
                return _checked_ints(np.asarray(values, dtype=np.int64), target, mlflow_type, name)
            if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                   for v in values):
                # Floats for an integer column (JSON parsers turn huge integers into floats):
                # whole numbers in range only — MLflow's cast would truncate or wrap them.
                return _checked_ints(np.asarray(values, dtype=np.float64), target, mlflow_type, name)
            return None
        if all(isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
               for v in values):
            return np.asarray(values, dtype=target)
        return None
    if mlflow_type == "string" and all(isinstance(v, str) for v in values):
        return np.asarray(values, dtype=object)
    return None


def _checked_ints(values: np.ndarray, target: Any, mlflow_type: str, name: str) -> np.ndarray:
    """Integers (or whole floats) that fit `target`, or a 400 naming the column."""
    info = np.iinfo(target)
    if values.dtype.kind == "f":
        if not np.isfinite(values).all():
            raise BadRequest(f"column {name!r} is {mlflow_type} in the model signature; it cannot hold a missing "
                             "or infinite value (send a double column for that)")
        if not (values == np.floor(values)).all():
            raise BadRequest(f"column {name!r} is {mlflow_type} in the model signature; got non-integer values")
    if values.size:
        low, high = values.min(), values.max()
        if (values.dtype.kind == "u" and int(high) > info.max) or float(low) < info.min or float(high) > info.max:
            raise BadRequest(f"column {name!r} ({mlflow_type}) has values out of range [{info.min}, {info.max}]")
    return values.astype(target)


def _concat(parts: list[Any]) -> Any:
    if all(isinstance(p, np.ndarray) for p in parts):
        try:
            return np.concatenate(parts)
        except ValueError:
            pass
    out: list[Any] = []
    for p in parts:
        out.extend(p.tolist() if isinstance(p, np.ndarray) else p)
    return out


def _few(names: list[str], limit: int = 20) -> str:
    """A list for an error message: all of it when short, the first `limit` and a count when not."""
    if len(names) <= limit:
        return repr(names)
    return f"{names[:limit]!r} and {len(names) - limit} more"


def _json_columns(fmt: str, value: Any) -> tuple[dict[str, Any], int] | None:
    """A scoring payload as column lists (no pandas), or None when it is not plain tabular JSON.

    dataframe_split with columns, dataframe_records / instances as records,
    inputs as a dict of equal-length lists of scalars. Anything else (index,
    ragged rows, nested values) returns None and goes to MLflow's parser,
    which owns the error messages.
    """
    try:
        if fmt == "dataframe_split":
            if not isinstance(value, dict) or set(value) - {"columns", "data"}:
                return None
            names = value.get("columns")
            data = value.get("data")
            if not isinstance(names, list) or not isinstance(data, list) or not data:
                return None
            if len(set(map(str, names))) != len(names) or not all(isinstance(n, str) for n in names):
                return None
            width = len(names)
            if not all(isinstance(r, list) and len(r) == width for r in data):
                return None
            cols = list(zip(*data))
            columns = {n: list(c) for n, c in zip(names, cols)}
            n = len(data)
        elif fmt in ("dataframe_records", "instances"):
            if not isinstance(value, list) or not value or not all(isinstance(r, dict) for r in value):
                return None
            names_seen: dict[str, None] = {}
            for rec in value:
                names_seen.update(dict.fromkeys(rec))
            columns = {k: [rec.get(k) for rec in value] for k in names_seen}
            n = len(value)
        elif fmt == "inputs":
            if not isinstance(value, dict) or not value:
                return None
            lengths = {len(v) if isinstance(v, list) else -1 for v in value.values()}
            if len(lengths) != 1 or -1 in lengths or 0 in lengths:
                return None
            columns = dict(value)
            n = lengths.pop()
        else:
            return None
    except TypeError:
        return None
    for col in columns.values():
        for v in col:
            if isinstance(v, (list, dict)):
                return None  # nested values: MLflow decides what they mean
    return columns, n


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

# Distributions that provide the same import as the name a model's requirements use.
_EQUIVALENT_DISTRIBUTIONS = {
    "mlflow": ("mlflow", "mlflow-skinny"),
    "xgboost": ("xgboost", "xgboost-cpu"),
    "tensorflow": ("tensorflow", "tensorflow-cpu"),
    "opencv-python": ("opencv-python", "opencv-python-headless"),
}
# Native flavors whose raw model has a faster predict on a float matrix.
NATIVE_FLAVORS = ("sklearn", "xgboost", "lightgbm")


def load_model(settings: ServeSettings) -> ServedModel:
    """Download (if remote) and load the model named by `settings.model_uri`.

    Raises `ModelLoadError(permanent=True)` when the model can never load here
    (a local path that does not exist, packages this environment lacks), and
    whatever MLflow raises otherwise (the caller retries those).
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
    limit_threads(settings.model_threads)
    uri = settings.model_uri
    if "://" not in uri and ":/" not in uri and not os.path.exists(uri):
        raise ModelLoadError(f"the local model path {uri!r} does not exist", permanent=True)
    # One download; both the pyfunc and the raw model load from it.
    local_path = mlflow.artifacts.download_artifacts(artifact_uri=uri)
    missing, mismatched = check_requirements(local_path)
    if missing:
        event(log, logging.WARNING, "the model's requirements are not all installed", missing=list(missing))
    try:
        pyfunc = mlflow.pyfunc.load_model(local_path)
    except Exception as exc:
        missing_module = _missing_module(exc)
        if missing_module is None:
            raise
        needs = ", ".join(missing) if missing else f"the module {missing_module!r}"
        raise ModelLoadError(
            f"the model needs Python packages this serving image does not have: {needs} "
            f"(No module named {missing_module!r}); serve it with an image that has them "
            "(ModelVersion spec.serving.image)",
            permanent=True,
        ) from exc
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
        missing_requirements=missing,
        mismatched_requirements=mismatched,
    )
    native = next((f for f in NATIVE_FLAVORS if f in flavors), None)
    if native is not None:
        _attach_native(model, native)
        _limit_model_threads(model.estimator, settings.model_threads)
    return model


def limit_threads(threads: int) -> None:
    """Cap the BLAS and OpenMP thread pools of this process (threadpoolctl), for every model."""
    from threadpoolctl import threadpool_limits

    threadpool_limits(limits=threads)


def _limit_model_threads(raw: Any, threads: int) -> None:
    """xgboost and lightgbm keep their own thread count on the model; set it too."""
    if raw is None:
        return
    try:
        if hasattr(raw, "get_booster"):  # xgboost sklearn API
            raw.set_params(n_jobs=threads)
            raw.get_booster().set_param({"nthread": threads})
        elif type(raw).__module__.startswith("xgboost"):  # a bare xgboost Booster
            raw.set_param({"nthread": threads})
        elif type(raw).__module__.startswith("lightgbm") and hasattr(raw, "set_params"):
            raw.set_params(n_jobs=threads)
    except Exception as exc:  # noqa: BLE001 - a thread setting is an optimisation, never a reason to fail
        event(log, logging.INFO, "could not set the model's thread count", error=f"{type(exc).__name__}: {exc}")


def _missing_module(exc: BaseException) -> str | None:
    """The module name if an ImportError is anywhere in the exception's chain (MLflow wraps them)."""
    import re

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, ImportError):
            return current.name or str(current)
        found = re.search(r"No module named '([^']+)'", str(current))
        if found:
            return found.group(1)
        current = current.__cause__ or current.__context__
    return None


def check_requirements(local_path: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The model's `requirements.txt` against this environment: (missing, other-version) requirements.

    Missing packages are named in the load error if the load fails; a version
    mismatch is only reported (MLflow itself only warns about it).
    """
    from importlib.metadata import PackageNotFoundError, version

    from packaging.requirements import InvalidRequirement, Requirement
    from packaging.utils import canonicalize_name

    path = os.path.join(local_path, "requirements.txt")
    if not os.path.isfile(path):
        return (), ()
    missing: list[str] = []
    mismatched: list[str] = []
    with open(path, encoding="utf-8") as fh:
        lines = fh.read().splitlines()
    for line in lines:
        line = line.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue  # options (-r, --index-url …) and comments
        try:
            req = Requirement(line)
        except InvalidRequirement:
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        name = canonicalize_name(req.name)
        installed = None
        for dist in _EQUIVALENT_DISTRIBUTIONS.get(name, (name,)):
            try:
                installed = version(dist)
                break
            except PackageNotFoundError:
                continue
        if installed is None:
            missing.append(line)
        elif req.specifier and not req.specifier.contains(installed.split("+", 1)[0], prereleases=True):
            mismatched.append(f"{line} (installed: {installed})")
    return tuple(missing), tuple(mismatched)


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


def _raw_model(model: ServedModel, flavor: str) -> Any:
    try:
        return model.pyfunc.get_raw_model()
    except Exception:  # noqa: BLE001 - older wrappers without get_raw_model: load it directly
        import importlib

        return importlib.import_module(f"mlflow.{flavor}").load_model(model.local_path)


def _attach_native(model: ServedModel, flavor: str) -> None:
    """Find the raw model and decide whether the numeric fast path is a candidate.

    The candidate is verified against pyfunc by `validate` before the first request.
    """
    try:
        raw = _raw_model(model, flavor)
    except Exception as exc:  # noqa: BLE001 - no raw model: serve through pyfunc
        event(log, logging.INFO, "no native model; serving through pyfunc", reason=f"{type(exc).__name__}: {exc}")
        return
    model.estimator = raw
    fn = getattr(raw, model.predict_fn_name, None)
    classes = getattr(raw, "classes_", None)
    if model.predict_fn_name == "predict" and classes is not None and np.ndim(classes) == 1:
        model.classes = tuple(np.asarray(classes).tolist())
    if fn is None or not callable(fn):
        return
    if flavor == "sklearn" and model.predict_fn_name == "predict":
        fn = _linear_predict(raw) or fn
    if flavor == "xgboost" and hasattr(raw, "get_booster"):
        # The sklearn API checks feature names against a DataFrame; the matrix
        # below is in fit order by construction.
        base = fn

        def fn(x: np.ndarray) -> Any:
            return base(x, validate_features=False)

        if model.predict_fn_name == "predict":
            fn = _xgboost_predict(raw) or fn
    elif flavor != "sklearn" and not hasattr(raw, "feature_names_in_") and not hasattr(raw, "n_features_in_"):
        return  # a bare Booster: its predict differs from the wrapper's; leave it to pyfunc
    sig = model.signature
    if sig is None or sig.kind == "tensors":
        _attach_tensor_fast_path(model, raw, fn, sig)
        return
    if not sig.named_columns:
        return
    optional = [str(s.name) for s in sig.inputs if not s.required]
    other = [f"{s.name} ({s.type})" for s in sig.inputs if s.type not in _FAST_TYPES]
    if optional or other:
        # Say why, so a slower path is never a mystery. A column that may be missing (MLflow's
        # infer_signature marks columns with NaN in the training data so) has to be filled the way
        # MLflow fills it, which only pyfunc does.
        event(log, logging.INFO, "native fast path off; serving through batched pyfunc",
              reason=("optional column(s) " + _few(optional) if optional else "") +
              ("; " if optional and other else "") + ("non-numeric column(s) " + _few(other) if other else ""))
        return
    # Feed columns in the order the model was fitted with when it knows it
    # (pyfunc reorders to the signature, which may differ from fit order).
    fitted = getattr(raw, "feature_names_in_", None)
    names = tuple(str(c) for c in fitted) if fitted is not None else sig.input_names
    if set(names) != set(sig.input_names):
        return
    types = {s.name: s.type for s in sig.inputs}
    ints = [i for i, c in enumerate(names) if types[c] in _INT_TYPES]
    model.fast_columns = names
    model.fast_positions = {c: i for i, c in enumerate(names)}
    if names != sig.input_names:
        model.sig_to_fast = [sig.input_names.index(c) for c in names]
    model.int_columns = np.asarray(ints, dtype=np.intp) if ints else None
    model.int_types = tuple(str(types[names[i]]) for i in ints)
    model.fast_fn = fn
    # Estimators fitted on DataFrames warn on every ndarray call; the column
    # order is guaranteed above, so the warning is noise (and costs time).
    warnings.filterwarnings("ignore", message="X does not have valid feature names", category=UserWarning)


def _linear_predict(raw: Any) -> Any:
    """A linear model's own `predict` as the two numpy operations it is, without sklearn's per-call checks.

    sklearn's `predict` spends ~170 µs per call validating its input (dtype,
    feature names, finiteness) around a ~5 µs matrix product; the fast path
    already guarantees a float64 matrix in fit order, so only finiteness is
    left to check (with sklearn's own messages). Exactly `decision_function`
    + argmax / threshold (classifiers) or `X @ coef_.T + intercept_`
    (regressors), for estimators that do not override `predict`; `validate`
    still compares it with pyfunc before it serves. None for anything else.
    """
    try:
        from sklearn.linear_model._base import LinearClassifierMixin, LinearModel
    except ImportError:  # pragma: no cover - a future sklearn moved them: keep sklearn's own predict
        return None
    coef = getattr(raw, "coef_", None)
    intercept = getattr(raw, "intercept_", None)
    if not isinstance(coef, np.ndarray) or coef.dtype != np.float64 or getattr(raw, "sparse_coef_", None) is not None:
        return None
    intercept = np.asarray(intercept if intercept is not None else 0.0, dtype=np.float64)
    cls = type(raw)
    if isinstance(raw, LinearClassifierMixin) and cls.predict is LinearClassifierMixin.predict \
            and cls.decision_function is LinearClassifierMixin.decision_function and coef.ndim == 2:
        classes = np.asarray(raw.classes_)
        weights = coef.T

        def classify(x: np.ndarray) -> np.ndarray:
            _check_finite(x)
            scores = x @ weights + intercept
            if scores.shape[1] == 1:
                return np.asarray(classes[(scores[:, 0] > 0).astype(int)])
            return np.asarray(classes[scores.argmax(axis=1)])

        return classify
    # sklearn's own predict, or its docstring-only override (`return super().predict(X)`).
    plain_predict = cls.predict is LinearModel.predict or (
        getattr(cls.predict, "__qualname__", "") == "MultiOutputLinearModel.predict"
        and getattr(cls.predict, "__module__", "").startswith("sklearn.linear_model")
    )
    if isinstance(raw, LinearModel) and plain_predict and \
            getattr(cls, "_decision_function", None) is LinearModel._decision_function:
        weights = coef.T

        def regress(x: np.ndarray) -> np.ndarray:
            _check_finite(x)
            return np.asarray(x @ weights + intercept)

        return regress
    return None


def _xgboost_predict(raw: Any) -> Callable[[np.ndarray], np.ndarray] | None:
    """XGBoost's sklearn-API `predict` as the one `Booster.inplace_predict` call it makes, per call overhead cached.

    `XGBClassifier.predict` spends ~100 µs of Python per call around the native
    prediction, whatever the rows: two nested `config_context` blocks (each a
    JSON round trip of the global config through the C library, only to set
    the logging verbosity), the iteration range and the device checks worked
    out again, then the probability → label step. The iteration range (best
    iteration with early stopping) and the inplace decision are properties of
    the fitted model, so they are computed once here, by xgboost's own
    methods; each call is then the native prediction the wrapper's
    `inplace_predict` makes (same C call, same arguments, so bit-identical
    values; see `_DenseInplace`) plus, for classifiers, the
    wrapper's own label rule for the two common shapes: binary (one
    probability per row, label = p > 0.5) and multi-class soft-probabilities
    (argmax). Anything else (gblinear, multi-label, `multi:softmax`, rankers,
    subclasses with their own predict, an xgboost without these methods)
    returns None and keeps the wrapper's predict. `validate` still compares
    the result with pyfunc before it serves.
    """
    try:
        from xgboost.sklearn import XGBClassifier, XGBModel
    except ImportError:  # pragma: no cover - the flavor implies xgboost is installed
        return None
    cls = type(raw)
    classifier = isinstance(raw, XGBClassifier) and cls.predict is XGBClassifier.predict
    plain = not classifier and isinstance(raw, XGBModel) and cls.predict is XGBModel.predict
    can_inplace = getattr(raw, "_can_use_inplace_predict", None)
    iteration_range_of = getattr(raw, "_get_iteration_range", None)
    width = getattr(raw, "n_features_in_", None)
    if not (classifier or plain) or not callable(can_inplace) or not callable(iteration_range_of):
        return None
    if not isinstance(width, (int, np.integer)) or width <= 0:
        return None
    try:
        if not can_inplace():
            return None
        booster = raw.get_booster()
        iteration_range = iteration_range_of(None)
        missing = raw.missing
    except Exception:  # noqa: BLE001 - an xgboost whose internals moved: keep its own predict
        return None

    def inplace(x: np.ndarray) -> np.ndarray:
        # What XGBModel.predict passes, minus base_margin=None (the default).
        out: np.ndarray = booster.inplace_predict(
            x, iteration_range=iteration_range, predict_type="value", missing=missing, validate_features=False
        )
        return out

    values = _DenseInplace.build(booster, iteration_range, missing, int(width), inplace) or inplace
    if plain:
        return values
    n_classes = getattr(raw, "n_classes_", None)
    if raw.objective == "multi:softmax" or not isinstance(n_classes, (int, np.integer)):
        return None
    try:
        # The output's shape is a property of the model (one column per class, or one probability).
        probe = values(np.zeros((1, int(width))))
    except Exception:  # noqa: BLE001 - keep the wrapper's predict, which will raise the real error
        return None
    if probe.ndim > 1 and n_classes != 2:

        def multiclass(x: np.ndarray) -> np.ndarray:
            return np.asarray(np.argmax(values(x), axis=1))

        return multiclass
    if probe.ndim == 1 and n_classes == 2:

        def binary(x: np.ndarray) -> np.ndarray:
            # XGBClassifier: np.repeat(0, n) then 1 where p > 0.5 — int64 labels.
            return (values(x) > 0.5).astype(np.int64)

        return binary
    return None


class _DenseInplace:
    """`Booster.inplace_predict` on a float64 matrix as the one C call it makes, with its per-call set-up cached.

    `inplace_predict` rebuilds on every call what is the same for every call of
    a served model: the prediction config (a JSON document), the imports and
    type dispatch, and — inside the C library — a fresh proxy DMatrix whose
    context reads the cgroup CPU quota files (11 system calls). Here the config
    is serialised once and each thread reuses one proxy DMatrix, which the C
    API takes for exactly this ("an optional proxy DMatrix instance"); the
    data's array interface is built by xgboost's own helper as before. Same C
    function, same arguments: bit-identical results, ~35 µs instead of ~85 µs
    per call. It leans on names xgboost's Python package does not export
    (`core._LIB`, `_ProxyDMatrix`, …), so `build` gives None — and the public
    `inplace_predict` is used — if any is missing or if the two disagree on a
    probe matrix; anything but a float64 matrix also takes the public call.
    """

    def __init__(self, booster: Any, config: bytes, fallback: Callable[[np.ndarray], np.ndarray]) -> None:
        import ctypes
        import threading

        from xgboost import core
        from xgboost._data_utils import array_interface

        self._booster = booster
        self._config = config
        self._fallback = fallback
        self._local = threading.local()  # a proxy holds the last call's data: one per thread
        self._lib = core._LIB
        self._check = core._check_call
        self._proxy_type = core._ProxyDMatrix
        self._ulong = ctypes.c_uint64  # the C API's bst_ulong
        self._ulong_p = ctypes.POINTER(ctypes.c_uint64)
        self._float_p = ctypes.POINTER(ctypes.c_float)
        self._byref = ctypes.byref
        self._interface = array_interface

    @classmethod
    def build(
        cls, booster: Any, iteration_range: Any, missing: Any, width: int, fallback: Callable[[np.ndarray], np.ndarray]
    ) -> _DenseInplace | None:
        try:
            from xgboost.core import make_jcargs

            # The arguments `Booster.inplace_predict` serialises on every call, serialised once.
            config = make_jcargs(
                type=0, training=False, iteration_begin=int(iteration_range[0]),
                iteration_end=int(iteration_range[1]), missing=missing, strict_shape=False, cache_id=0,
            )
            direct = cls(booster, config, fallback)
            rng = np.random.default_rng(0)
            probe = np.vstack([np.zeros((1, width)), rng.normal(scale=3.0, size=(7, width))])
            probe[1, 0] = np.nan  # a missing value takes each tree's default branch
            for rows in (probe[:1], probe):
                want, got = fallback(rows), direct(rows)
                if got.dtype != want.dtype or got.shape != want.shape or not np.array_equal(got, want, equal_nan=True):
                    raise ValueError("the direct call disagrees with inplace_predict")
        except Exception as exc:  # noqa: BLE001 - any doubt: the public inplace_predict
            event(log, logging.INFO, "xgboost direct inplace predict unavailable; using inplace_predict",
                  reason=f"{type(exc).__name__}: {shorten(str(exc), 300)}")
            return None
        return direct

    def __call__(self, x: np.ndarray) -> np.ndarray:
        if x.dtype != np.float64 or x.ndim != 2 or not x.flags.aligned:
            return self._fallback(x)  # what inplace_predict would convert first
        proxy = getattr(self._local, "proxy", None)
        if proxy is None:
            proxy = self._local.proxy = self._proxy_type()
        shape = self._ulong_p()
        dims = self._ulong()
        preds = self._float_p()
        byref = self._byref
        self._check(self._lib.XGBoosterPredictFromDense(
            self._booster.handle, self._interface(x), self._config, proxy.handle,
            byref(shape), byref(dims), byref(preds),
        ))
        out_shape = tuple(int(shape[i]) for i in range(dims.value))
        size = math.prod(out_shape)
        # The buffer belongs to the booster (per thread) and is reused by its next call: copy it out.
        return np.ctypeslib.as_array(preds, shape=(size,)).reshape(out_shape).copy()


def _check_finite(x: np.ndarray) -> None:
    # sklearn's messages, so clients see the same 422 either way.
    if not np.isfinite(x).all():
        if np.isnan(x).any():
            raise ValueError("Input X contains NaN.")
        raise ValueError("Input X contains infinity or a value too large for dtype('float64').")


def _attach_tensor_fast_path(model: ServedModel, raw: Any, fn: Any, sig: SignatureInfo | None) -> None:
    # A single float64 [-1, n] tensor (or no signature) and a model that knows n.
    width = getattr(raw, "n_features_in_", None)
    if not isinstance(width, (int, np.integer)) or getattr(raw, "feature_names_in_", None) is not None:
        return
    if sig is not None:
        if len(sig.inputs) != 1:
            return
        spec = sig.inputs[0]
        if spec.type != "float64" or spec.shape is None or len(spec.shape) != 2 or spec.shape[1] != width:
            return
    model.fast_columns = tuple(f"x{i}" for i in range(int(width)))
    model.fast_tensor = True
    model.fast_fn = fn


# --------------------------------------------------------------------------- validation gate


@dataclass(frozen=True, slots=True)
class GateResult:
    passed: bool
    reason: str
    seconds: float


def validate(model: ServedModel) -> GateResult:
    """Score the model's own logged input example before declaring it ready.

    Also verifies the fast path and batched scoring against plain pyfunc on
    the same input, and turns either off (not the model) if they disagree.
    """
    start = time.perf_counter()
    if model.serving_example is None:
        if model.fast_path:
            _verify_fast_path_on_probe(model)
        _verify_batching(model, None)
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
    _verify_batching(model, reference)
    return GateResult(True, "the model scored its own input example", time.perf_counter() - start)


def _verify_batching(model: ServedModel, reference: Any) -> None:
    """Batched scoring must equal one-by-one scoring; else batching is turned off for this model.

    The check scores the example (or a probe), its first row alone and its
    rows reversed as three requests, then as one batch, and compares each
    request's slice with scoring it alone. A model whose answer
    for a row depends on the other rows in the batch fails this and is served
    unbatched. A custom model with nothing to check on is served unbatched
    too; the native flavors (sklearn, xgboost, lightgbm) score rows
    independently by construction.
    """
    try:
        inp = _example_batch_input(model)
        native = model.flavor in NATIVE_FLAVORS
        if inp is None:
            if not native:
                _disable_batching(model, "no input example to verify batched scoring on")
            return
        if not native and _distinct_rows(inp) < 2:
            # One row (or identical rows) cannot reveal a model whose answer for a row
            # depends on the others: every request of the check would be the same.
            _disable_batching(model, "the input example has fewer than 2 distinct rows to verify batched scoring on")
            return
        inputs = [inp, _first_row(inp), _reversed(inp)]
        alone = [model.predict(i) for i in inputs]
        if reference is not None and not _same(_plain(alone[0]), _plain(reference)):
            _disable_batching(model, "decoding as columns does not match MLflow's parser on the example")
            return
        parts = split_output(model.predict_many(inputs), [i.rows for i in inputs])
        if parts is None:
            _disable_batching(model, "the output cannot be split by rows")
            return
        for got, want in zip(parts, alone):
            if not _same(_plain(got), _plain(want)):
                _disable_batching(model, "batched predictions differ from one-by-one predictions")
                return
    except Exception as exc:  # noqa: BLE001 - any doubt: serve unbatched
        _disable_batching(model, f"{type(exc).__name__}: {shorten(str(exc), 300)}")


def _distinct_rows(inp: FrameInput | PyfuncInput) -> int:
    try:
        if isinstance(inp, FrameInput):
            rows = zip(*(list(v) for v in inp.columns.values()))
            return len({repr(r) for r in rows})
        return len({np.asarray(r).tobytes() for r in inp.data})
    except Exception:  # noqa: BLE001 - unhashable oddities: treat as not verifiable
        return 0


def _first_row(inp: FrameInput | PyfuncInput) -> FrameInput | PyfuncInput:
    if isinstance(inp, FrameInput):
        return FrameInput({k: list(v)[:1] for k, v in inp.columns.items()}, 1, inp.params)
    return PyfuncInput(inp.data[:1].copy(), inp.params)


def _reversed(inp: FrameInput | PyfuncInput) -> FrameInput | PyfuncInput:
    if isinstance(inp, FrameInput):
        return FrameInput({k: list(v)[::-1] for k, v in inp.columns.items()}, inp.n, inp.params)
    return PyfuncInput(inp.data[::-1].copy(), inp.params)


def _example_batch_input(model: ServedModel) -> FrameInput | PyfuncInput | None:
    """The model's example (or a numeric probe) as the input the batcher would see, if it is batchable."""
    if model.serving_example is not None:
        payload = dict(model.serving_example)
        params = model._params(payload.pop("params", None))
        for fmt in SCORING_FORMATS:
            if fmt in payload and model._frames_ok():
                cols = _json_columns(fmt, payload[fmt])
                if cols is not None:
                    return FrameInput(cols[0], cols[1], params)
        from mlflow.pyfunc.scoring_server import infer_and_parse_data

        data = infer_and_parse_data(payload, model.pyfunc.metadata.get_input_schema())
        candidate = PyfuncInput(data, params)
        return candidate if model.batch_key(candidate) is not None and candidate.rows > 0 else None
    sig = model.signature
    if sig is not None and sig.named_columns and all(s.type in _PROBE_DTYPES for s in sig.inputs):
        # Three probe rows of small numbers every numeric signature accepts.
        columns = {s.name: np.array([0, 1, 2], dtype=_PROBE_DTYPES[s.type]) for s in sig.inputs if s.name}
        return FrameInput(columns, 3, None)
    return None


def _plain(x: Any) -> Any:
    import pandas as pd

    if isinstance(x, (pd.DataFrame, pd.Series)):
        return x.reset_index(drop=True).to_numpy()
    return x


def _disable_batching(model: ServedModel, why: str) -> None:
    model.batching = False
    event(log, logging.WARNING, "batching disabled; requests are scored one by one", reason=shorten(why, 500))


def _verify_fast_path_on_probe(model: ServedModel) -> None:
    # No example to compare on: a single all-zeros row is the cheapest input
    # every numeric signature accepts.
    import pandas as pd

    probe = np.zeros((1, len(model.fast_columns)))
    reference_input: Any
    if model.fast_tensor:
        reference_input = probe.copy()
    else:
        assert model.signature is not None  # the column fast path requires one
        reference_input = pd.DataFrame(
            {s.name: np.zeros(1, dtype=_PROBE_DTYPES[s.type]) for s in model.signature.inputs}
        )
    try:
        fast = model.fast_fn(probe)
        reference = model.pyfunc.predict(reference_input)
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
