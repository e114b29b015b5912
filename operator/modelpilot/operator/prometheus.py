"""Prometheus adapter: instant PromQL queries with one place that classifies failures.

An adapter of the operator (bottom layer). An empty result is returned as an
empty list — never as zero — and every transport or query failure raises
``PrometheusError``; the analysis engine decides what either means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx

from modelpilot.operator.analysis import QueryError


class PrometheusError(QueryError):
    """Prometheus could not answer the query (unreachable, 5xx, bad query)."""


@dataclass(frozen=True)
class Sample:
    labels: dict[str, str]
    value: float


class Prometheus:
    def __init__(self, url: str, timeout: float = 5.0, transport: httpx.BaseTransport | None = None) -> None:
        if not url:
            raise PrometheusError("no Prometheus URL: set the operator's MODELPILOT_PROMETHEUS_URL")
        self.url = url.rstrip("/")
        self.client = httpx.Client(base_url=self.url, timeout=timeout, transport=transport)

    def close(self) -> None:
        self.client.close()

    def query(self, promql: str, at: float | None = None) -> list[Sample]:
        """Samples of an instant query, evaluated now or at ``at`` (epoch seconds)."""
        params: dict[str, str] = {"query": promql}
        if at is not None:
            params["time"] = f"{at:.3f}"
        try:
            resp = self.client.get("/api/v1/query", params=params)
        except httpx.HTTPError as exc:
            raise PrometheusError(f"Prometheus at {self.url} is unreachable ({type(exc).__name__})") from exc
        try:
            body = resp.json()
        except ValueError:
            raise PrometheusError(f"Prometheus answered HTTP {resp.status_code} without JSON") from None
        if resp.status_code != 200 or body.get("status") != "success":
            raise PrometheusError(f"query failed (HTTP {resp.status_code}): {body.get('error', '')[:300]}")
        data = body.get("data") or {}
        if data.get("resultType") == "scalar":
            return [Sample({}, float(data["result"][1]))]
        samples = []
        for item in data.get("result") or []:
            value = float(item["value"][1])
            samples.append(Sample(dict(item.get("metric") or {}), value))
        return samples

    def scalar(self, promql: str, at: float | None = None) -> float | None:
        """The single value of a query, or ``None`` when it has no (finite) result.

        A query that returns several series is an error, not its first series: a check compares one
        number, and which series comes first is arbitrary (cf. argo-rollouts#363).
        """
        samples = self.query(promql, at)
        if not samples:
            return None
        if len(samples) > 1:
            shown = ", ".join("{" + ", ".join(f'{k}="{v}"' for k, v in sorted(s.labels.items())) + "}"
                              for s in samples[:3])
            raise PrometheusError(f"the query returned {len(samples)} series ({shown}{', …' if len(samples) > 3 else ''})"
                                  "; a check needs one value: aggregate it, e.g. sum(...) or max(...)")
        value = samples[0].value
        return None if math.isnan(value) or math.isinf(value) else value
