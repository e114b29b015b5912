"""Prometheus adapter: instant PromQL queries with one place that classifies failures.

An adapter of the operator (bottom layer). An empty result is returned as an
empty list — never as zero — and every transport or query failure raises
``PrometheusError``; the analysis engine decides what either means.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import httpx


class PrometheusError(Exception):
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

    def query(self, promql: str) -> list[Sample]:
        try:
            resp = self.client.get("/api/v1/query", params={"query": promql})
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

    def scalar(self, promql: str) -> float | None:
        """The single value of a query, or ``None`` when it has no (finite) result."""
        samples = self.query(promql)
        if not samples:
            return None
        value = samples[0].value
        return None if math.isnan(value) or math.isinf(value) else value
