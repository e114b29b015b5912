"""Open Inference Protocol v2 (REST/JSON) adapter.

Where it sits: between `app.py` (HTTP) and the predict core (`model.py`).
`decode_request` validates an inference request and builds typed numpy
tensors; `to_model_input` maps those tensors onto the model's signature;
`encode_response` renders predictions as v2 output tensors. No prediction
logic lives here.

Tabular models (column signatures) accept either
  * one tensor of shape [rows, n_columns], columns in signature order, or
  * one tensor per column, named after it, of shape [rows] or [rows, 1].
Tensor-signature and signature-less models receive the tensors as-is.

Missing values: JSON has no NaN, so a missing number is sent as `null` in the
data of an FP16/FP32/FP64 tensor (it becomes NaN, what pandas and MLflow use
for a missing number), or as the bare tokens `NaN`, `Infinity`, `-Infinity`
that Python's `json.dumps` writes. A missing string is `null` in a BYTES
tensor. Integer and BOOL tensors cannot hold a missing value: send FP64.
Outputs are typed the same way: numbers stay numbers (FP64 / INT64 / BOOL),
strings are BYTES, and a missing value is `null` — never the text "None".
"""

from __future__ import annotations

import json
import math
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import BadRequest
from .model import MatrixInput, ModelInput, ServedModel, SignatureInfo, _few

# v2 datatype → numpy dtype, and which kinds of JSON-decoded data each accepts.
DATATYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype(np.uint8),
    "UINT16": np.dtype(np.uint16),
    "UINT32": np.dtype(np.uint32),
    "UINT64": np.dtype(np.uint64),
    "INT8": np.dtype(np.int8),
    "INT16": np.dtype(np.int16),
    "INT32": np.dtype(np.int32),
    "INT64": np.dtype(np.int64),
    "FP16": np.dtype(np.float16),
    "FP32": np.dtype(np.float32),
    "FP64": np.dtype(np.float64),
    "BYTES": np.dtype(object),
}
MAX_DIMS = 32  # numpy's limit on dimensions
MAX_DIM = 2**31 - 1
_ACCEPTED_KINDS = {"BOOL": "b", "FP16": "fiu", "FP32": "fiu", "FP64": "fiu"}  # ints: "iu" (+ integral floats)

# MLflow signature type → v2 datatype, for model metadata.
_MLFLOW_TO_V2 = {
    "double": "FP64", "float": "FP32", "long": "INT64", "integer": "INT32", "boolean": "BOOL",
    "string": "BYTES", "binary": "BYTES", "datetime": "BYTES",
    "float64": "FP64", "float32": "FP32", "float16": "FP16", "int64": "INT64", "int32": "INT32",
    "int16": "INT16", "int8": "INT8", "uint64": "UINT64", "uint32": "UINT32", "uint16": "UINT16",
    "uint8": "UINT8", "bool": "BOOL", "object": "BYTES", "str": "BYTES",
}


@dataclass(frozen=True, slots=True)
class Tensor:
    name: str
    datatype: str
    array: np.ndarray  # already in the declared shape and dtype


@dataclass(frozen=True, slots=True)
class InferRequest:
    id: str | None
    inputs: tuple[Tensor, ...]
    parameters: dict[str, Any] | None


# --------------------------------------------------------------------------- decode


def loads_lenient(body: bytes) -> Any:
    """JSON, plus the NaN / Infinity / -Infinity tokens Python's json module writes (MLflow accepts them).

    orjson (strict, fast) first; only a body it refuses is parsed again by the
    standard library, which knows those tokens, so well-formed JSON pays nothing.
    """
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        strict_error = exc
    try:
        return json.loads(body)
    except (ValueError, RecursionError):
        raise BadRequest(f"malformed JSON: {strict_error}") from None


def decode_request(body: bytes, max_columns: int | None = None) -> InferRequest:
    """A v2 inference request body → typed tensors. `max_columns` bounds the number of inputs."""
    return decode_document(loads_lenient(body), max_columns)


def decode_document(doc: Any, max_columns: int | None = None) -> InferRequest:
    """An already parsed v2 inference request → typed tensors (see `decode_request`)."""
    if not isinstance(doc, dict):
        raise BadRequest("the inference request must be a JSON object with an 'inputs' list")
    inputs = doc.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise BadRequest("'inputs' must be a non-empty list of tensors {name, shape, datatype, data}")
    req_id = doc.get("id")
    if req_id is not None and not isinstance(req_id, str):
        raise BadRequest("'id' must be a string")
    params = doc.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise BadRequest("'parameters' must be a JSON object")
    check_input_count(len(inputs), max_columns)
    tensors = tuple(_decode_tensor(i, t) for i, t in enumerate(inputs))
    check_unique_names(tensors)
    return InferRequest(req_id, tensors, params)


def check_input_count(count: int, max_columns: int | None) -> None:
    if max_columns is not None and count > max_columns:
        raise BadRequest(
            f"the request has {count} inputs; this server accepts at most {max_columns} "
            "(MODELPILOT_SERVE_MAX_COLUMNS)"
        )


def _decode_tensor(index: int, doc: Any) -> Tensor:
    if not isinstance(doc, dict):
        raise BadRequest(f"inputs[{index}] must be an object with name, shape, datatype and data")
    name = doc.get("name")
    if not isinstance(name, str) or not name:
        raise BadRequest(f"inputs[{index}]: 'name' must be a non-empty string")
    where = f"input '{name}'"
    shape = check_shape(where, doc.get("shape"))
    datatype = check_datatype(where, doc.get("datatype"))
    if "data" not in doc:
        raise BadRequest(f"{where}: 'data' is missing")
    data = doc["data"]
    if not isinstance(data, list):
        data = [data]
    if datatype == "BYTES":
        arr = _bytes_array(where, data)
    else:
        arr = numeric_array(where, datatype, data)
    if arr.ndim > 1 and list(arr.shape) != shape:
        # Nested data must already be the declared row-major shape.
        raise BadRequest(f"{where}: nested data has shape {list(arr.shape)} but 'shape' says {shape}")
    return shaped_tensor(where, name, datatype, arr, shape)


# The checks below are shared with the gRPC adapter (grpc_server.py), so both
# protocols accept and refuse exactly the same tensors.


def check_unique_names(tensors: tuple[Tensor, ...]) -> None:
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        raise BadRequest(f"input names must be unique; got {names}")


def check_shape(where: str, shape: Any) -> list[int]:
    if (
        not isinstance(shape, list)
        or not shape
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and 0 <= d <= MAX_DIM for d in shape)
    ):
        raise BadRequest(
            f"{where}: 'shape' must be a non-empty list of at most {MAX_DIMS} integers "
            f"between 0 and {MAX_DIM}, got {shape!r}"
        )
    return shape


def check_datatype(where: str, datatype: Any) -> str:
    if datatype not in DATATYPES:
        raise BadRequest(f"{where}: unsupported datatype {datatype!r}; use one of {', '.join(DATATYPES)}")
    return str(datatype)


def shaped_tensor(where: str, name: str, datatype: str, arr: np.ndarray, shape: list[int]) -> Tensor:
    """`arr` in the declared `shape`, which must hold exactly its elements."""
    expected = math.prod(shape)
    if arr.size != expected:
        raise BadRequest(f"{where}: shape {shape} needs {expected} elements, data has {arr.size}")
    try:
        return Tensor(name, datatype, arr.reshape(shape))
    except ValueError as exc:  # e.g. shape [0, 2**62]: zero elements, but no such array
        raise BadRequest(f"{where}: shape {shape} is not a valid tensor shape: {exc}") from None


def numeric_array(where: str, datatype: str, data: list[Any]) -> np.ndarray:
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise BadRequest(f"{where}: data is ragged (nested lists of different lengths)") from None
    target = DATATYPES[datatype]
    if arr.dtype == target and datatype in _ACCEPTED_KINDS:
        return arr  # the common case (JSON floats as FP64): nothing to convert or check
    if arr.dtype.kind == "O" and datatype in ("FP16", "FP32", "FP64"):
        arr = _with_missing(where, datatype, arr)
    kind = arr.dtype.kind
    if arr.size == 0:
        return arr.astype(target)
    if datatype in _ACCEPTED_KINDS:
        if kind not in _ACCEPTED_KINDS[datatype]:
            what = "booleans" if datatype == "BOOL" else "numbers"
            raise BadRequest(f"{where}: datatype {datatype} needs {what}, data has {_describe_kind(arr)}")
        with np.errstate(over="ignore", invalid="ignore"):
            out = arr.astype(target, copy=False)
        if kind in "fiu" and target.itemsize < 8:
            # 1e300 as FP32 would silently become inf; refuse instead.
            finite = np.isfinite(arr) if kind == "f" else np.ones(arr.shape, dtype=bool)
            if not np.isfinite(out[finite]).all():
                limits = np.finfo(target)
                raise BadRequest(f"{where}: values out of range for {datatype} [{limits.min}, {limits.max}]")
        return out
    # Integer datatypes: integers, or floats that are whole numbers (some clients write 1.0).
    if kind == "f":
        if not np.array_equal(arr, np.floor(arr)):
            raise BadRequest(f"{where}: datatype {datatype} needs integers, data has non-integer numbers")
    elif kind not in "iu":
        raise BadRequest(f"{where}: datatype {datatype} needs integers, data has {_describe_kind(arr)}")
    info = np.iinfo(target)
    if arr.min() < info.min or arr.max() > info.max:
        raise BadRequest(f"{where}: values out of range for {datatype} [{info.min}, {info.max}]")
    return arr.astype(target)


def _with_missing(where: str, datatype: str, arr: np.ndarray) -> np.ndarray:
    """FP data with `null` elements: null becomes NaN; anything but numbers and null is refused."""
    flat = arr.reshape(-1)
    for v in flat:
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            raise BadRequest(f"{where}: datatype {datatype} needs numbers (null for a missing value), data has {v!r}")
    return np.array([np.nan if v is None else v for v in flat], dtype=np.float64).reshape(arr.shape)


def _bytes_array(where: str, data: list[Any]) -> np.ndarray:
    # JSON has no bytes: BYTES elements arrive as strings (or nested lists of
    # them); null is a missing string.
    try:
        arr = np.asarray(data, dtype=object)
    except ValueError:
        raise BadRequest(f"{where}: data is ragged (nested lists of different lengths)") from None
    flat = arr.reshape(-1)
    if not all(v is None or isinstance(v, str) for v in flat):
        raise BadRequest(f"{where}: datatype BYTES needs strings (null for a missing value)")
    return arr


def _describe_kind(arr: np.ndarray) -> str:
    return {"b": "booleans", "U": "strings", "S": "strings", "O": "mixed or null values", "f": "floats"}.get(
        arr.dtype.kind, str(arr.dtype)
    )


# --------------------------------------------------------------------------- the fast-path lane

# Datatypes the lane takes, with the element types whose float64 value is the one the
# full decoder ends with. FP32/FP16 would round through a narrower float first, and
# BOOL/BYTES/unsigned are never fast-path input: those go the full way.
_LANE_INT_MIN, _LANE_INT_MAX = -(2**63), 2**63 - 1


def fast_input(model: ServedModel, doc: Any, max_columns: int | None = None) -> tuple[str | None, ModelInput] | None:
    """The common v2 request of a fast-path model, straight to its float64 matrix; None: use the full decoder.

    The common requests are one FP64/INT64 tensor of plain JSON numbers per
    column, each of shape [rows] or [rows, 1] (column models), or one FP64
    [rows, n] matrix (tensor-signature models). The full decoder builds and
    checks one numpy tensor per input, maps them onto the signature and
    stacks them — a dozen numpy calls per column, most of a 1-row request's
    decode. Here the plain lists go into one `np.array` call, in the fast
    path's column order. Returns (request id, input) only where the full path
    would produce the same matrix; anything else — another datatype, nested or
    non-number data, a shape that does not match, unknown, missing or repeated
    names, parameters, too many inputs — returns None, and the full decoder
    answers it, with its own error messages.
    """
    if model.fast_fn is None or type(doc) is not dict:
        return None
    inputs = doc.get("inputs")
    req_id = doc.get("id")
    if type(inputs) is not list or not inputs or doc.get("parameters") is not None:
        return None
    if (req_id is not None and type(req_id) is not str) or (max_columns is not None and len(inputs) > max_columns):
        return None
    if model.fast_tensor:
        matrix = _lane_matrix(inputs, len(model.fast_columns))
        return None if matrix is None else (req_id, MatrixInput(matrix))
    positions = model.fast_positions
    if positions is None or len(inputs) != len(positions):
        return None
    columns: list[Any] = [None] * len(positions)
    rows = -1
    try:  # a missing key, a wrong type or an empty shape anywhere: not the common request
        for t in inputs:
            if type(t) is not dict:
                return None
            at = positions.get(t["name"])  # an unhashable name raises TypeError
            data = t["data"]
            if at is None or columns[at] is not None or type(data) is not list:
                return None  # unknown or repeated name (the others are then missing), or not a list
            if rows < 0:
                rows = len(data)
                if rows == 0:
                    return None
            elif len(data) != rows:
                return None
            shape = t["shape"]
            if type(shape) is not list or shape[0] != rows or type(shape[0]) is not int or (
                len(shape) != 1 and (len(shape) != 2 or shape[1] != 1 or type(shape[1]) is not int)
            ):
                return None
            datatype = t["datatype"]
            if rows == 1:  # the usual 1-row request: one element, checked inline
                kind = type(data[0])
                if not (kind is float and datatype == "FP64") and not (
                    kind is int and (datatype == "FP64" or (datatype == "INT64" and _LANE_INT_MIN <= data[0] <= _LANE_INT_MAX))
                ):
                    return None
            elif not _lane_numbers(datatype, data):
                return None
            columns[at] = data
    except (KeyError, TypeError, IndexError):
        return None
    # Every position is filled: as many inputs as columns, none unknown, none repeated.
    matrix = np.array(list(zip(*columns)), dtype=np.float64)  # rows × columns, C order
    checked = model._checked(matrix)  # integer columns: whole numbers only, as before
    return None if checked is None else (req_id, MatrixInput(checked))


def _lane_numbers(datatype: Any, data: list[Any]) -> bool:
    """Plain JSON numbers for FP64 (floats or integers), plain integers within int64 for INT64."""
    if datatype == "FP64":
        for v in data:
            if type(v) is not float and type(v) is not int:
                return False
        return True
    if datatype == "INT64":
        for v in data:
            if type(v) is not int or not _LANE_INT_MIN <= v <= _LANE_INT_MAX:
                return False
        return True
    return False


def _lane_matrix(inputs: list[Any], width: int) -> np.ndarray | None:
    """One FP64 [rows, width] tensor with flat data of plain numbers, for tensor-signature fast models."""
    if len(inputs) != 1 or type(inputs[0]) is not dict:
        return None
    t = inputs[0]
    name, shape, data = t.get("name"), t.get("shape"), t.get("data")
    if type(name) is not str or not name or t.get("datatype") != "FP64" or type(data) is not list:
        return None
    if type(shape) is not list or len(shape) != 2 or type(shape[0]) is not int or type(shape[1]) is not int:
        return None
    if shape[1] != width or shape[0] <= 0 or shape[0] * width != len(data) or not _lane_numbers("FP64", data):
        return None
    return np.array(data, dtype=np.float64).reshape(shape[0], width)


# --------------------------------------------------------------------------- map to the model


def to_model_input(model: ServedModel, req: InferRequest) -> ModelInput:
    sig = model.signature
    params = req.parameters
    if sig is not None and sig.named_columns:
        return _tabular(model, sig, req.inputs, params)
    if len(req.inputs) == 1:
        return model.from_tensors(req.inputs[0].array, params)
    if sig is not None and sig.kind == "tensors":
        return model.from_tensors({t.name: t.array for t in req.inputs}, params)
    # Signature-less with several inputs: treat them as columns.
    return model.from_columns(_columns(req.inputs), params)


def _tabular(
    model: ServedModel, sig: SignatureInfo, tensors: tuple[Tensor, ...], params: dict[str, Any] | None
) -> ModelInput:
    names = sig.input_names
    if len(tensors) == 1 and tensors[0].name not in names:
        t = tensors[0]
        shape = list(t.array.shape)
        if t.array.ndim != 2 or shape[1] != len(names):
            raise BadRequest(
                f"input '{t.name}' has shape {shape}; this model takes a [rows, {len(names)}] tensor "
                f"with columns in signature order ({', '.join(names)}), or one input per column named after it"
            )
        return model.from_signature_matrix(t.array, params)
    known = sig.name_set
    unknown = [t.name for t in tensors if t.name not in known]
    if unknown:
        raise BadRequest(f"unknown input(s) {_few(unknown)}; the model's inputs are {_few(list(names))}")
    given = {t.name for t in tensors}
    missing = [n for n in sig.required_names if n not in given]
    if missing:
        raise BadRequest(f"missing input column(s) {_few(missing)}")
    return model.from_columns(_columns(tensors), params)


def _columns(tensors: tuple[Tensor, ...]) -> dict[str, np.ndarray]:
    columns: dict[str, np.ndarray] = {}
    rows: int | None = None
    for t in tensors:
        arr = t.array
        if arr.ndim == 2 and arr.shape[1] == 1:
            arr = arr[:, 0]
        if arr.ndim != 1:
            raise BadRequest(f"input '{t.name}' is a column and must have shape [rows] or [rows, 1], got {list(t.array.shape)}")
        if rows is None:
            rows = arr.shape[0]
        elif arr.shape[0] != rows:
            raise BadRequest(f"input '{t.name}' has {arr.shape[0]} rows, other inputs have {rows}")
        columns[t.name] = arr
    return columns


# --------------------------------------------------------------------------- encode


def encode_response(model_name: str, model_version: str, req_id: str | None, output: Any, model: ServedModel) -> dict[str, Any]:
    return {
        "model_name": model_name,
        "model_version": model_version,
        "id": req_id or str(uuid.uuid4()),
        "outputs": encode_outputs(output, model),
    }


def encode_outputs(output: Any, model: ServedModel) -> list[dict[str, Any]]:
    if type(output) is np.ndarray:  # the fast path's answer, first: this runs for every request
        return [_output_tensor(_default_name(model), output)]
    import pandas as pd

    if isinstance(output, list) and output and all(isinstance(r, dict) for r in output):
        output = pd.DataFrame(output)  # one record per row: one output tensor per key

    if isinstance(output, pd.DataFrame):
        return [_output_tensor(str(c), output[c].to_numpy()) for c in output.columns]
    if isinstance(output, pd.Series):
        return [_output_tensor(str(output.name) if output.name is not None else _default_name(model), output.to_numpy())]
    if isinstance(output, dict):
        return [_output_tensor(str(k), _array(v)) for k, v in output.items()]
    return [_output_tensor(_default_name(model), _array(output))]


def _array(value: Any) -> np.ndarray:
    """np.asarray, except that ragged data (lists of different lengths) becomes one object element per row."""
    try:
        return np.asarray(value)
    except ValueError:
        items = list(value)
        arr = np.empty(len(items), dtype=object)
        arr[:] = items
        return arr


def _default_name(model: ServedModel) -> str:
    sig = model.signature
    if sig is not None and len(sig.outputs) == 1 and sig.outputs[0].name:
        return sig.outputs[0].name
    return "output-0"


def _output_tensor(name: str, arr: np.ndarray) -> dict[str, Any]:
    """One output tensor. Numeric arrays go to orjson as they are (NaN is written as null)."""
    kind = arr.dtype.kind
    if kind in "biuf":
        flat = np.ascontiguousarray(arr).reshape(-1)
        return {"name": name, "datatype": _v2_datatype(arr), "shape": list(arr.shape), "data": flat}
    if kind in "mM":  # dates and durations: ISO text, as /invocations writes them; NaT is null
        text = [None if np.isnat(v) else str(v) for v in arr.reshape(-1)]
        return {"name": name, "datatype": "BYTES", "shape": list(arr.shape), "data": text}
    datatype, data = typed_elements(arr.reshape(-1).tolist())
    return {"name": name, "datatype": datatype, "shape": list(arr.shape), "data": data}


def typed_elements(values: list[Any]) -> tuple[str, list[Any]]:
    """Python objects (an object array's elements) → (v2 datatype, JSON-ready elements).

    Numbers stay numbers (FP64, or INT64 when all are integers), booleans are
    BOOL, strings are BYTES; None and NaN are missing values, written as null.
    Only a mix of kinds falls back to BYTES, each element as text.
    """
    kinds: set[str] = set()
    values = [_element(v) for v in values]
    for v in values:
        if v is None or (isinstance(v, float) and v != v):
            continue
        if isinstance(v, (bool, np.bool_)):
            kinds.add("b")
        elif isinstance(v, (int, np.integer)):
            kinds.add("i")
        elif isinstance(v, (float, np.floating)):
            kinds.add("f")
        elif isinstance(v, str):
            kinds.add("s")
        else:
            kinds.add("o")
    missing = [v is None or (isinstance(v, float) and v != v) for v in values]

    def plain(v: Any) -> Any:
        return v.item() if isinstance(v, np.generic) else v

    if kinds <= {"i", "f"} and kinds:
        if kinds == {"i"} and not any(missing):
            return "INT64", [plain(v) for v in values]
        return "FP64", [None if m else float(v) for v, m in zip(values, missing)]
    if kinds == {"b"}:
        return "BOOL", [None if m else bool(v) for v, m in zip(values, missing)]
    if kinds <= {"s"}:
        return "BYTES", [None if m else v for v, m in zip(values, missing)]
    return "BYTES", [None if m else (v if isinstance(v, str) else str(plain(v))) for v, m in zip(values, missing)]


def _element(v: Any) -> Any:
    """One output element as JSON can carry it: missing markers → None, bytes → base64, nested → JSON text."""
    if v is None or isinstance(v, (str, bool, int, float, np.generic)):
        if isinstance(v, (np.datetime64, np.timedelta64)):
            return None if np.isnat(v) else str(v)
        return v
    if isinstance(v, (bytes, bytearray)):
        import base64

        return base64.b64encode(bytes(v)).decode("ascii")  # as MLflow's scoring server writes binary
    try:
        import pandas as pd

        if v is pd.NA or v is pd.NaT:
            return None
        if isinstance(v, pd.Timestamp):
            return v.isoformat()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(v, (list, tuple, dict, np.ndarray)):
        # A ragged or nested element (a list per row): one BYTES element of JSON text.
        return orjson.dumps(v, option=orjson.OPT_SERIALIZE_NUMPY, default=str).decode()
    if hasattr(v, "isoformat"):
        return v.isoformat()
    return str(v)


def _v2_datatype(arr: np.ndarray) -> str:
    kind = arr.dtype.kind
    if kind == "b":
        return "BOOL"
    if kind in "iuf":
        return {"i": "INT", "u": "UINT", "f": "FP"}[kind] + str(arr.dtype.itemsize * 8)
    return "BYTES"


def tensor_metadata(sig: SignatureInfo | None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """v2 model-metadata `inputs`/`outputs` for a signature (columns become [-1] tensors)."""
    if sig is None:
        return [], []

    def one(spec: Any, index: int, prefix: str) -> dict[str, Any]:
        shape = list(spec.shape) if spec.shape is not None else [-1]
        return {
            "name": spec.name or f"{prefix}-{index}",
            "datatype": _MLFLOW_TO_V2.get(spec.type.lower(), "BYTES"),
            "shape": shape,
        }

    return (
        [one(s, i, "input") for i, s in enumerate(sig.inputs)],
        [one(s, i, "output") for i, s in enumerate(sig.outputs)],
    )
