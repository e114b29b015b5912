"""Ground-truth feedback: remember what was predicted under which id, score it when the truth arrives.

Where it sits: after every successful prediction the app calls
`FeedbackStore.remember(id, output)`; `POST /v2/models/{name}/feedback` and
`POST /feedback` call `parse` then `submit`. Quality metrics (per model
version, like every series) go to `ServeMetrics`:

* classifiers — `modelpilot_feedback_total{outcome="correct|incorrect"}` and
  the `modelpilot_feedback_accuracy` gauge;
* regressors — the `modelpilot_feedback_absolute_error` histogram.

Memory is bounded: at most `max_pending` ids (least recently predicted
dropped first), each forgotten after `ttl` seconds, and forgotten once its
truth was submitted (so a row is never counted twice). The store is per
process: with several replicas, feedback must reach the replica that
answered (session affinity on the id) — the id says which pod it came from
only by being unknown elsewhere (404).

Request body: `{"id": "...", "truth": value}` or a list of such objects. For
a multi-row prediction `truth` is a list with one value per row; for one row
a scalar or a one-element list.
"""

from __future__ import annotations

import math
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

from .errors import NotFound, Unprocessable
from .metrics import ServeMetrics

Clock = Callable[[], float]
MAX_ID_LENGTH = 256
MAX_ITEMS = 10_000


@dataclass(frozen=True, slots=True)
class FeedbackItem:
    id: str
    truth: list[Any]


# A pending prediction: (expires at, 1-D predictions, one per row). A plain
# tuple of a float and an ndarray is untracked by Python's garbage collector,
# so 100 000 of them do not turn every full collection into a long pause.
_Pending = tuple[float, np.ndarray]


def prediction_rows(output: Any) -> np.ndarray | None:
    """The output as one value per row, or None when it is not one value per row."""
    if type(output) is np.ndarray and output.ndim == 1:
        return output  # the fast path's answer, checked first: this runs for every prediction
    import pandas as pd

    if isinstance(output, pd.DataFrame):
        if output.shape[1] != 1:
            return None
        output = output.iloc[:, 0]
    if isinstance(output, pd.Series):
        output = output.to_numpy()
    if isinstance(output, list):
        try:
            output = np.asarray(output)
        except ValueError:  # ragged rows: not one value per row
            return None
    if not isinstance(output, np.ndarray):
        return None
    if output.ndim == 2 and output.shape[1] == 1:
        output = output[:, 0]
    if output.ndim != 1:
        return None
    rows: np.ndarray = output
    return rows


def parse(body: bytes) -> list[FeedbackItem]:
    """Validate a feedback body; every structural problem is a 422 that names it."""
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Unprocessable(f"malformed JSON: {exc}") from None
    docs = doc if isinstance(doc, list) else [doc]
    if not docs:
        raise Unprocessable("the feedback list is empty; send {\"id\": ..., \"truth\": ...} or a list of them")
    if len(docs) > MAX_ITEMS:
        raise Unprocessable(f"at most {MAX_ITEMS} feedback items per request, got {len(docs)}")
    items: list[FeedbackItem] = []
    for i, d in enumerate(docs):
        where = f"item {i}" if isinstance(doc, list) else "the feedback"
        if not isinstance(d, dict):
            raise Unprocessable(f"{where} must be an object {{\"id\": ..., \"truth\": ...}}")
        unknown = sorted(set(d) - {"id", "truth"})
        if unknown:
            raise Unprocessable(f"{where}: unknown field(s) {unknown}; expected 'id' and 'truth'")
        pid = d.get("id")
        if not isinstance(pid, str) or not pid or len(pid) > MAX_ID_LENGTH:
            raise Unprocessable(f"{where}: 'id' must be the non-empty prediction id string returned with the prediction")
        if "truth" not in d:
            raise Unprocessable(f"{where}: 'truth' is missing")
        truth = d["truth"]
        values = truth if isinstance(truth, list) else [truth]
        if not values:
            raise Unprocessable(f"{where}: 'truth' is an empty list")
        for v in values:
            if v is None or isinstance(v, (dict, list)):
                raise Unprocessable(f"{where}: 'truth' values must be numbers, strings or booleans, got {v!r}")
        items.append(FeedbackItem(pid, values))
    ids = [it.id for it in items]
    if len(set(ids)) != len(ids):
        raise Unprocessable("each id may appear once per feedback request")
    return items


class FeedbackStore:
    def __init__(self, metrics: ServeMetrics, max_pending: int, ttl_seconds: float, clock: Clock = time.monotonic) -> None:
        self.metrics = metrics
        self.max_pending = max_pending
        self.ttl = ttl_seconds
        self.clock = clock
        self._pending: OrderedDict[str, _Pending] = OrderedDict()

    def __len__(self) -> int:
        return len(self._pending)

    def remember(self, pred_id: str, output: Any) -> None:
        if self.max_pending <= 0:
            return
        rows = prediction_rows(output)
        if rows is None:
            return
        pending = self._pending
        now = self.clock()
        if pred_id in pending:  # a client-chosen id again: it moves to the back (a new key is there already)
            pending.move_to_end(pred_id)
        pending[pred_id] = (now + self.ttl, rows)
        if len(pending) > self.max_pending:
            pending.popitem(last=False)
        self._expire_some(now=now)
        self.metrics.set_pending(len(pending))

    def _expire_some(self, limit: int = 4, now: float | None = None) -> None:
        # Amortised expiry: the oldest entries are at the front.
        if now is None:
            now = self.clock()
        pending = self._pending
        for _ in range(limit):
            if not pending:
                return
            key, first = next(iter(pending.items()))
            if first[0] > now:
                return
            del pending[key]

    def _lookup(self, pred_id: str) -> _Pending | None:
        entry = self._pending.get(pred_id)
        if entry is None:
            return None
        if entry[0] <= self.clock():
            del self._pending[pred_id]
            return None
        return entry

    def submit(self, items: list[FeedbackItem], classes: tuple[Any, ...] | None) -> dict[str, Any]:
        """Score every item or none: all ids and truths are checked before any metric moves."""
        unknown = [it.id for it in items if self._lookup(it.id) is None]
        if unknown:
            self.metrics.set_pending(len(self._pending))  # lookups may have dropped expired ids
            shown = ", ".join(repr(u) for u in unknown[:10]) + (" …" if len(unknown) > 10 else "")
            raise NotFound(
                f"unknown or expired prediction id(s) {shown}: ids are remembered for {self.ttl:g} s "
                f"(at most {self.max_pending}) and accept feedback once"
            )
        class_set = {_key(c) for c in classes} if classes is not None else None
        plans: list[tuple[str, np.ndarray, list[Any]]] = []
        for it in items:
            preds = self._pending[it.id][1]
            if len(it.truth) != preds.shape[0]:
                raise Unprocessable(
                    f"prediction {it.id!r} has {preds.shape[0]} row(s); 'truth' has {len(it.truth)} value(s)"
                )
            regression = class_set is None and preds.dtype.kind in "iuf"
            if regression:
                bad = [v for v in it.truth if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)]
                if bad:
                    raise Unprocessable(f"prediction {it.id!r} is a regression: 'truth' needs finite numbers, got {bad[0]!r}")
            elif class_set is not None:
                bool_classes = all(isinstance(c, bool) for c in class_set)
                bad = [v for v in it.truth if _key(v) not in class_set or isinstance(v, bool) != bool_classes]
                if bad:
                    raise Unprocessable(
                        f"prediction {it.id!r}: truth {bad[0]!r} is not one of the model's classes {list(classes or ())}"
                    )
            plans.append(("regression" if regression else "classification", preds, it.truth))
        correct = incorrect = 0
        errors: list[float] = []
        for it, (kind, preds, truth) in zip(items, plans):
            del self._pending[it.id]
            if kind == "regression":
                errors.extend(abs(float(p) - float(t)) for p, t in zip(preds.tolist(), truth))
            else:
                hits = sum(1 for p, t in zip(preds.tolist(), truth) if _key(p) == _key(t))
                correct += hits
                incorrect += len(truth) - hits
        if correct or incorrect:
            self.metrics.observe_feedback_classes(correct, incorrect)
        if errors:
            self.metrics.observe_feedback_errors(errors)
        self.metrics.set_pending(len(self._pending))
        result: dict[str, Any] = {"accepted": len(items), "rows": correct + incorrect + len(errors)}
        if correct or incorrect:
            result.update(correct=correct, incorrect=incorrect)
        if errors:
            result["mean_absolute_error"] = sum(errors) / len(errors)
        return result


def _key(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    return value

