"""MLflow scoring protocol (`POST /invocations`) adapter.

Where it sits: between `app.py` and the predict core. It decides the body
format from the content type, hands the decoded document to
`ServedModel.from_scoring_payload` / `from_csv` (the same entry point the
validation gate uses), and renders `{"predictions": ...}` the way
`mlflow models serve` does.

Accepted: application/json with exactly one of dataframe_split,
dataframe_records, instances, inputs (plus optional params); text/csv or
application/csv with a header row. A missing content type is read as JSON.
For a model whose signature names its columns, `inputs` or `instances` as
rows without names (`[[5.1, 3.5, 1.4, 0.2]]`) are read as the signature's
columns in order — as a v2 `[rows, n]` tensor is; MLflow's own server refuses
them — and a row of another width is a 400 naming both widths.
As in MLflow, the bare tokens NaN, Infinity and -Infinity (what Python's
`json.dumps` writes) are accepted as numbers; `null` is a missing value.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .errors import BadRequest, UnsupportedMediaType
from .model import ModelInput, ServedModel
from .oip import loads_lenient

JSON_TYPES = frozenset({"", "application/json"})
CSV_TYPES = frozenset({"text/csv", "application/csv"})


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(model: ServedModel, body: bytes, content_type: str | None, max_columns: int | None = None) -> ModelInput:
    mt = media_type(content_type)
    if mt in JSON_TYPES:
        return model.from_scoring_payload(loads_lenient(body), max_columns)
    if mt in CSV_TYPES:
        return model.from_csv(body)
    raise UnsupportedMediaType(
        f"unsupported content type {mt!r}; use application/json, text/csv or application/csv"
    )


def encode(output: Any) -> dict[str, Any]:
    return {"predictions": jsonable(output)}


def jsonable(output: Any) -> Any:
    """Predictions as MLflow renders them: DataFrames as records, arrays as (nested) lists."""
    import pandas as pd

    if isinstance(output, np.ndarray):
        # orjson writes contiguous numeric arrays directly, far faster than tolist().
        if output.dtype.kind == "f" and output.dtype.itemsize < 8:
            # MLflow's server writes a float32 prediction as the float64 it becomes in Python
            # (-144.94129943847656, not orjson's shortest float32 text -144.9413): same value, same text.
            return output.astype(np.float64)
        if output.dtype.kind in "biuf":
            return np.ascontiguousarray(output)
        if output.dtype.kind in "mM":  # datetime64[ns].tolist() would give nanosecond integers
            return [None if np.isnat(v) else str(v) for v in output.reshape(-1)]
        return output.tolist()
    if isinstance(output, pd.DataFrame):
        return output.to_dict(orient="records")
    if isinstance(output, pd.Series):
        return output.tolist()
    if isinstance(output, dict):
        return {str(k): jsonable(v) for k, v in output.items()}
    if isinstance(output, (list, tuple)):
        return [jsonable(v) for v in output]
    if isinstance(output, np.generic):
        return output.item()
    return output
