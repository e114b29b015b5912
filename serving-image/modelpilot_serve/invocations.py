"""MLflow scoring protocol (`POST /invocations`) adapter.

Where it sits: between `app.py` and the predict core. It decides the body
format from the content type, hands the decoded document to
`ServedModel.from_scoring_payload` / `from_csv` (the same entry point the
validation gate uses), and renders `{"predictions": ...}` the way
`mlflow models serve` does.

Accepted: application/json with exactly one of dataframe_split,
dataframe_records, instances, inputs (plus optional params); text/csv or
application/csv with a header row. A missing content type is read as JSON.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from .errors import BadRequest, UnsupportedMediaType
from .model import ModelInput, ServedModel

JSON_TYPES = frozenset({"", "application/json"})
CSV_TYPES = frozenset({"text/csv", "application/csv"})


def media_type(content_type: str | None) -> str:
    return (content_type or "").split(";", 1)[0].strip().lower()


def decode(model: ServedModel, body: bytes, content_type: str | None) -> ModelInput:
    mt = media_type(content_type)
    if mt in JSON_TYPES:
        try:
            doc = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"malformed JSON: {exc}") from None
        return model.from_scoring_payload(doc)
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
        if output.dtype.kind in "biuf":
            return np.ascontiguousarray(output)
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
