"""Analysis engine: measure a candidate against its baseline in Prometheus and give a verdict with evidence.

Reconcile-level logic with no I/O of its own: it receives a ``query`` function
(the Prometheus adapter's ``scalar``) so every rule here is tested without a
server. The rules users of Flagger and Argo Rollouts asked for:

* a query error or an empty result is never read as success;
* below ``minSamples`` requests there is no verdict, only ``NoData``, and the
  ``noData`` policy (``hold`` by default, or ``inconclusive`` / ``fail``) says
  what that means;
* thresholds are absolute (``max``/``min``) or relative to the baseline
  (``maxDelta``: candidate ≤ baseline + delta; ``maxRatio``: candidate ≤
  baseline × ratio + ``slack``);
* every measurement keeps its value, baseline value, resolved queries,
  threshold, sample count and verdict, for status, Events and metrics.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from modelpilot.operator import api

Query = Callable[[str], "float | None"]


class QueryError(Exception):
    """A query could not be answered (the metrics backend's adapter raises a subclass of this)."""

PASS, FAIL, NODATA, ERROR = "Pass", "Fail", "NoData", "Error"

#: Built-in checks over the serving metrics; ``{sel}`` is the variant's label selector.
BUILTIN_QUERIES: dict[str, str] = {
    "error-rate": ('sum(rate(modelpilot_requests_total{{{sel},code=~"5.."}}[{interval}]))'
                   " / sum(rate(modelpilot_requests_total{{{sel}}}[{interval}]))"),
    "latency-p99": ("histogram_quantile(0.99, sum by (le) "
                    "(rate(modelpilot_request_duration_seconds_bucket{{{sel}}}[{interval}])))"),
    "accuracy": ('sum(rate(modelpilot_feedback_total{{{sel},outcome="correct"}}[{interval}]))'
                 " / sum(rate(modelpilot_feedback_total{{{sel}}}[{interval}]))"),
}
#: prediction-shift compares two selectors: total variation distance between predicted-class shares.
SHIFT_QUERY = ("0.5 * sum(abs("
               "(sum by (class) (rate(modelpilot_predictions_total{{{sel}}}[{interval}]))"
               " / scalar(sum(rate(modelpilot_predictions_total{{{sel}}}[{interval}]))))"
               " - (sum by (class) (rate(modelpilot_predictions_total{{{base}}}[{interval}]))"
               " / scalar(sum(rate(modelpilot_predictions_total{{{base}}}[{interval}]))))))")
SAMPLES_QUERY = "sum(increase(modelpilot_requests_total{{{sel}}}[{interval}]))"

#: Defaults that do not roll back an identical model on noise: p99 of a freshly started pod over a short
#: window varies by tens of milliseconds, so the latency check allows 1.5 × baseline + 50 ms (a real
#: regression of that size still fails); with ``failureLimit`` 1 two failing rounds are needed, and
#: ``minSamples`` 50 keeps one slow request from being a p99.
DEFAULT_CHECKS: list[dict[str, Any]] = [
    {"name": "error-rate", "maxDelta": 0.01},
    {"name": "latency-p99", "maxRatio": 1.5, "slack": 0.05},
]
DEFAULT_MIN_SAMPLES = 50


class AnalysisSpecError(ValueError):
    """The analysis spec cannot be evaluated; the message names the field."""


@dataclass(frozen=True)
class Target:
    """One measurable arm: which pods' series (by namespace, variant and model version)."""

    namespace: str
    variant: str
    version: str

    def selector(self) -> str:
        return f'namespace="{self.namespace}",variant="{self.variant}",version="{self.version}"'


@dataclass(frozen=True)
class Measurement:
    check: str
    verdict: str
    value: float | None
    baseline: float | None
    threshold: str
    samples: float | None
    query: str
    message: str
    stored_baseline: bool = False

    def as_status(self) -> dict[str, Any]:
        data = asdict(self)
        data["storedBaseline"] = data.pop("stored_baseline")
        for key in ("value", "baseline", "samples"):
            if data[key] is not None:
                data[key] = round(float(data[key]), 6)
        return data


@dataclass(frozen=True)
class Settings:
    interval: str = "1m"
    min_samples: int = DEFAULT_MIN_SAMPLES
    no_data: str = "hold"
    checks: list[dict[str, Any]] = field(default_factory=lambda: list(DEFAULT_CHECKS))

    @classmethod
    def from_spec(cls, spec: api.Analysis | None) -> Settings:
        """The settings of ``spec.rollout.analysis``, parsed already: its enum (``noData``) and pattern
        (``interval``) hold. What the model does not check — the CRD's CEL rules on each check — is checked
        here, and the message names the field."""
        spec = spec or _NO_ANALYSIS
        checks = [_check(c) for c in spec.checks] if spec.checks else list(DEFAULT_CHECKS)
        for i, check in enumerate(checks):
            name = check["name"]
            if not name:
                raise AnalysisSpecError(f"analysis.checks[{i}].name is required")
            if name not in BUILTIN_QUERIES and name != "prediction-shift" and not check.get("query"):
                raise AnalysisSpecError(f"analysis.checks[{i}]: {name!r} is not a built-in check "
                                        f"({', '.join([*BUILTIN_QUERIES, 'prediction-shift'])}) and has no query")
            if not any(k in check for k in ("max", "min", "maxDelta", "maxRatio", "minDelta")):
                raise AnalysisSpecError(f"analysis.checks[{i}] ({name}) needs a threshold: "
                                        "max, min, maxDelta, minDelta or maxRatio")
        return cls(interval=spec.interval or cls.interval,
                   min_samples=DEFAULT_MIN_SAMPLES if spec.min_samples is None else spec.min_samples,
                   no_data=spec.no_data.value if spec.no_data is not None else cls.no_data, checks=checks)


_NO_ANALYSIS = api.Analysis()
#: A check's fields as measure() and judge() read them: the spec's camelCase names, only those given (in the
#: order the API server delivers them, keys sorted, as when these were the body's own dicts).
_CHECK_FIELDS = (("max", "max"), ("max_delta", "maxDelta"), ("max_ratio", "maxRatio"), ("min", "min"),
                 ("min_delta", "minDelta"), ("name", "name"), ("query", "query"), ("slack", "slack"))


def _check(check: api.AnalysisCheck) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for field_name, key in _CHECK_FIELDS:
        value = getattr(check, field_name)
        if value is None:
            continue
        # The model reads every threshold as a float, but the API server (Go's JSON) writes an integral number
        # below 1e21 as an integer (``max: 1``), and thresholds and messages show it so ("max=1", not "max=1.0").
        integral = isinstance(value, float) and value.is_integer() and abs(value) < 1e21
        out[key] = int(value) if integral else value
    return out


def render(template: str, target: Target, interval: str, baseline: Target | None = None) -> str:
    """Fill a query template. Built-ins use ``{sel}``; custom queries may use the named variables."""
    return template.format(sel=target.selector(), base=(baseline or target).selector(), interval=interval,
                           namespace=target.namespace, variant=target.variant, version=target.version)


def _threshold_text(check: dict[str, Any]) -> str:
    parts = [f"{k}={check[k]}" for k in ("max", "min", "maxDelta", "minDelta", "maxRatio", "slack") if k in check]
    return ", ".join(parts)


def judge(check: dict[str, Any], value: float, baseline: float | None) -> tuple[bool, str]:
    """Compare one value with its thresholds. Relative thresholds without a baseline value fail closed."""
    reasons = []
    if "max" in check and value > float(check["max"]):
        reasons.append(f"{value:.4g} > max {check['max']}")
    if "min" in check and value < float(check["min"]):
        reasons.append(f"{value:.4g} < min {check['min']}")
    relative = [k for k in ("maxDelta", "minDelta", "maxRatio") if k in check]
    if relative and baseline is None:
        return False, "no baseline value to compare with"
    if baseline is not None:
        if "maxDelta" in check and value > baseline + float(check["maxDelta"]):
            reasons.append(f"{value:.4g} > baseline {baseline:.4g} + {check['maxDelta']}")
        if "minDelta" in check and value < baseline + float(check["minDelta"]):
            reasons.append(f"{value:.4g} < baseline {baseline:.4g} + ({check['minDelta']})")
        if "maxRatio" in check:
            limit = baseline * float(check["maxRatio"]) + float(check.get("slack", 0))
            if value > limit:
                reasons.append(f"{value:.4g} > {check['maxRatio']} × baseline {baseline:.4g} + "
                               f"{check.get('slack', 0)}")
    return (not reasons), ("; ".join(reasons) or "within threshold")


def window_text(settings: Settings, step_seconds: int | None) -> str:
    """The range of every query: the step's own time (samples from this step only), at most ``interval``."""
    longest = parse_duration(settings.interval)
    if step_seconds is None:
        return settings.interval
    return f"{max(1, min(step_seconds, longest))}s"


def parse_duration(text: str) -> int:
    """``30s`` / ``1m`` / ``2h`` in seconds."""
    return int(text[:-1]) * {"s": 1, "m": 60, "h": 3600}[text[-1]]


def measure(query: Query, settings: Settings, candidate: Target, baseline: Target | None,
            step_seconds: int | None = None, stored_baselines: dict[str, float] | None = None,
            baseline_query: Query | None = None) -> list[Measurement]:
    """Run every check for ``candidate`` (against ``baseline`` where one is given).

    ``step_seconds``: how long the step has run; queries cover only that time (never an earlier step's
    traffic). ``stored_baselines`` (check name → value): when the stable version serves no traffic (the
    100 % step), relative checks compare with the value measured at an earlier step; a check without one
    is measured on the stable version by ``baseline_query`` (e.g. at the rollout's start), if given.
    """
    interval = window_text(settings, step_seconds)
    samples_q = render(SAMPLES_QUERY, candidate, interval)
    try:
        samples = query(samples_q)
    except QueryError as exc:
        return [Measurement(c["name"], ERROR, None, None, _threshold_text(c), None, samples_q, str(exc))
                for c in settings.checks]
    results = []
    for check in settings.checks:
        name = check["name"]
        if name == "prediction-shift":
            template = SHIFT_QUERY
        else:
            template = check.get("query") or BUILTIN_QUERIES[name]
        q = render(template, candidate, interval, baseline)
        threshold = _threshold_text(check)
        if samples is None or samples < settings.min_samples:
            results.append(Measurement(name, NODATA, None, None, threshold, samples, q,
                                       f"{0 if samples is None else samples:.0f} requests in the last {interval} "
                                       f"< minSamples {settings.min_samples}"))
            continue
        needs_base = baseline is not None and name != "prediction-shift" and any(
            k in check for k in ("maxDelta", "minDelta", "maxRatio"))
        stored = stored_baselines is not None
        try:
            value = query(q)
            base_value = None
            if needs_base and stored and name in (stored_baselines or {}):
                base_value = (stored_baselines or {})[name]
            elif needs_base:
                assert baseline is not None
                ask = baseline_query if (stored and baseline_query is not None) else query
                base_value = ask(render(template, baseline, settings.interval if stored else interval))
        except QueryError as exc:
            results.append(Measurement(name, ERROR, None, None, threshold, samples, q, str(exc)))
            continue
        if name == "error-rate" and value is None and samples >= settings.min_samples:
            value = 0.0  # requests exist, none failed: 0/n, not "no data"
        if name == "error-rate" and base_value is None and needs_base and not stored:
            base_value = 0.0
        if name == "prediction-shift":
            base_value = 0.0
        if value is None or (isinstance(value, float) and math.isnan(value)):
            results.append(Measurement(name, NODATA, None, base_value, threshold, samples, q,
                                       "the query returned no value"))
            continue
        ok, why = judge(check, value, base_value)
        if stored and needs_base and base_value is not None:
            why += " (baseline: the stable version at an earlier step)"
        results.append(Measurement(name, PASS if ok else FAIL, value, base_value, threshold, samples, q, why,
                                   stored_baseline=stored and needs_base))
    return results


def overall(measurements: list[Measurement], no_data: str) -> str:
    """One verdict for a round: any Fail fails; Errors are inconclusive; NoData follows the policy."""
    verdicts = {m.verdict for m in measurements}
    if FAIL in verdicts:
        return "Fail"
    if NODATA in verdicts and no_data == "fail":
        return "Fail"
    if ERROR in verdicts:
        return "Inconclusive"
    if NODATA in verdicts:
        return "Inconclusive" if no_data == "inconclusive" else "Hold"
    return "Pass" if measurements else "Inconclusive"


def two_proportion_test(successes_a: float, n_a: float, successes_b: float, n_b: float,
                        alpha: float = 0.05, min_samples: int = 100) -> dict[str, Any]:
    """Two-sided z-test for a difference in success rates; names a winner only when significant."""
    if n_a < min_samples or n_b < min_samples:
        return {"decision": "NotEnoughData", "pValue": None, "z": None,
                "message": f"need {min_samples} samples per variant (have {n_a:.0f}, {n_b:.0f})"}
    p_a, p_b = successes_a / n_a, successes_b / n_b
    pooled = (successes_a + successes_b) / (n_a + n_b)
    se = math.sqrt(pooled * (1 - pooled) * (1 / n_a + 1 / n_b))
    if se == 0:
        return {"decision": "NoSignificantDifference", "pValue": 1.0, "z": 0.0, "rateA": p_a, "rateB": p_b,
                "message": "identical outcomes"}
    z = (p_a - p_b) / se
    p_value = math.erfc(abs(z) / math.sqrt(2))
    if p_value < alpha:
        decision = "A" if p_a > p_b else "B"
    else:
        decision = "NoSignificantDifference"
    return {"decision": decision, "pValue": p_value, "z": z, "rateA": p_a, "rateB": p_b,
            "message": f"success {p_a:.4f} vs {p_b:.4f}, z={z:.2f}, p={p_value:.4g} (alpha {alpha})"}
