"""modelpilot_serve: the serving process inside every model pod (`modelpilot serve`).

Map of the package (outside in):

* `cli`         — `modelpilot serve …` / `python -m modelpilot_serve`: flags, logging, run.
* `settings`    — CLI flags over env → one frozen, validated `ServeSettings`.
* `app`         — Starlette routes, the error mapping, uvicorn server construction.
* `state`       — background model loading and the ready / not-ready state.
* `oip`, `invocations` — protocol adapters (Open Inference Protocol v2, MLflow scoring).
* `runner`      — where predictions execute: direct, adaptive micro-batching, cached.
* `cache`       — inference cache (in-process LRU + TTL, or shared through Redis).
* `feedback`    — prediction ids → ground truth → per-version quality metrics.
* `openapi`     — the OpenAPI document served at /openapi.json.
* `model`       — the one predict core, MLflow loading, the validation gate.
* `metrics`, `logs`, `errors` — Prometheus series, JSON logs, the error vocabulary.

It never imports the operator package (`modelpilot`); the contract between
them is environment variables and HTTP endpoints only.
"""

from __future__ import annotations

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("modelpilot")
except PackageNotFoundError:  # running from a source tree without installation
    __version__ = "0+unknown"
