"""Analysis engine rules, with a scripted query function standing in for Prometheus.

The scripted function is a fault-injection boundary: it lets each test decide
exactly what Prometheus "answers" (values, empty results, errors). The real
Prometheus path is covered by the cluster tests.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest
from pydantic import ValidationError

from modelpilot.operator import analysis, api, plan
from modelpilot.operator.analysis import Settings, Target
from modelpilot.operator.prometheus import PrometheusError

CANARY = Target("ns", "iris", "2")
BASE = Target("ns", "iris", "1")


def scripted(samples: float | None, values: dict[str, float | None],
             base: dict[str, float | None] | None = None, fail: str = "") -> Callable[[str], float | None]:
    def query(q: str) -> float | None:
        if fail and fail in q:
            raise PrometheusError("connection refused")
        if q.startswith("sum(increase("):
            return samples
        sel_base = 'version="1"' in q and 'version="2"' not in q
        table = base if (sel_base and base is not None) else values
        for key, value in table.items():
            if key in q:
                return value
        return None
    return query


def test_a_regressing_error_rate_fails_relative_to_the_baseline() -> None:
    settings = Settings(checks=[{"name": "error-rate", "maxDelta": 0.01}])
    results = analysis.measure(scripted(100, {"code=~": 0.08}, {"code=~": 0.01}), settings, CANARY, BASE)
    (m,) = results
    assert m.verdict == "Fail" and m.value == 0.08 and m.baseline == 0.01 and m.samples == 100
    assert 'version="2"' in m.query and "maxDelta=0.01" == m.threshold
    assert analysis.overall(results, "hold") == "Fail"


def test_a_healthy_canary_passes() -> None:
    settings = Settings()  # default checks: error-rate and latency-p99
    q = scripted(200, {"code=~": 0.0, "histogram_quantile": 0.012}, {"code=~": 0.0, "histogram_quantile": 0.010})
    results = analysis.measure(q, settings, CANARY, BASE)
    assert [m.verdict for m in results] == ["Pass", "Pass"]
    assert analysis.overall(results, "hold") == "Pass"


def test_no_errors_at_all_is_zero_not_no_data() -> None:
    settings = Settings(checks=[{"name": "error-rate", "max": 0.05}])
    (m,) = analysis.measure(scripted(50, {}), settings, CANARY, None)
    assert m.verdict == "Pass" and m.value == 0.0


@pytest.mark.parametrize("policy,expected", [("hold", "Hold"), ("inconclusive", "Inconclusive"), ("fail", "Fail")])
def test_too_few_samples_is_no_data_and_the_policy_decides(policy: str, expected: str) -> None:
    settings = Settings(min_samples=20, no_data=policy, checks=[{"name": "error-rate", "max": 0.05}])
    results = analysis.measure(scripted(3, {"code=~": 0.0}), settings, CANARY, BASE)
    assert results[0].verdict == "NoData" and "3 requests in the last 1m < minSamples 20" in results[0].message
    assert analysis.overall(results, policy) == expected


def test_an_empty_result_or_a_query_error_is_never_success() -> None:
    settings = Settings(checks=[{"name": "latency-p99", "max": 0.5}])
    (empty,) = analysis.measure(scripted(100, {"histogram_quantile": None}), settings, CANARY, None)
    assert empty.verdict == "NoData"
    (broken,) = analysis.measure(scripted(100, {}, fail="histogram_quantile"), settings, CANARY, None)
    assert broken.verdict == "Error" and "connection refused" in broken.message
    assert analysis.overall([broken], "hold") == "Inconclusive"
    down = analysis.measure(scripted(100, {}, fail="increase"), settings, CANARY, None)
    assert {m.verdict for m in down} == {"Error"}


def test_relative_threshold_without_a_baseline_value_fails_closed() -> None:
    ok, why = analysis.judge({"maxRatio": 1.2}, 0.1, None)
    assert not ok and "no baseline" in why


def test_ratio_with_slack() -> None:
    assert analysis.judge({"maxRatio": 1.2, "slack": 0.01}, 0.021, 0.01)[0] is True
    assert analysis.judge({"maxRatio": 1.2, "slack": 0.0}, 0.021, 0.01)[0] is False


def test_custom_query_templates_get_their_variables() -> None:
    settings = Settings(interval="30s", checks=[{"name": "rows", "query":
                                                 'sum(rate(x{{namespace="{namespace}",version="{version}"}}[{interval}]))',
                                                 "max": 10}])
    (m,) = analysis.measure(scripted(100, {"sum(rate(x": 3.0}), settings, CANARY, None)
    assert m.query == 'sum(rate(x{namespace="ns",version="2"}[30s]))' and m.verdict == "Pass"


@pytest.mark.parametrize("spec,field", [
    ({"noData": "ignore"}, "noData"), ({"checks": [{"name": "bogus", "max": 1}]}, "not a built-in"),
    ({"checks": [{"name": "error-rate"}]}, "needs a threshold"), ({"interval": "5 minutes"}, "interval"),
])
def test_analysis_spec_errors_name_the_field(spec: dict, field: str) -> None:  # type: ignore[type-arg]
    """What the typed spec rejects (an enum, a pattern) is named where the reconciler parses it, as a spec
    error; what it cannot check (the CRD's CEL rules on each check) is named by ``Settings.from_spec``."""
    try:
        parsed = api.Analysis.model_validate(spec)
    except ValidationError as exc:
        message = plan.spec_errors(exc, root="spec.rollout.analysis")
        assert message.startswith(f"spec.rollout.analysis.{field}: "), message
        return
    with pytest.raises(analysis.AnalysisSpecError, match=field):
        Settings.from_spec(parsed)


def test_thresholds_read_as_the_api_server_delivers_them() -> None:
    """The typed spec reads every threshold as a float; one given as an integer stays one, so thresholds and
    messages read as written (the API server delivers ``max: 1`` as 1, and the dict code showed "max=1")."""
    settings = Settings.from_spec(api.Analysis.model_validate(
        {"checks": [{"name": "error-rate", "max": 1}, {"name": "latency-p99", "maxRatio": 1.5, "slack": 0}]}))
    assert settings.checks == [{"max": 1, "name": "error-rate"}, {"maxRatio": 1.5, "name": "latency-p99", "slack": 0}]
    assert [analysis._threshold_text(c) for c in settings.checks] == ["max=1", "maxRatio=1.5, slack=0"]
    assert Settings.from_spec(None) == Settings() == Settings.from_spec(api.Analysis.model_validate({}))


def test_two_proportion_test_declares_a_winner_only_when_significant() -> None:
    clear = analysis.two_proportion_test(950, 1000, 900, 1000)
    assert clear["decision"] == "A" and clear["pValue"] < 0.001
    close = analysis.two_proportion_test(905, 1000, 900, 1000)
    assert close["decision"] == "NoSignificantDifference"
    assert analysis.two_proportion_test(9, 10, 1, 10)["decision"] == "NotEnoughData"
    # z for 0.95 vs 0.90 with n=1000 each: pooled 0.925, se≈0.01178 → z≈4.245
    assert clear["z"] == pytest.approx(4.245, abs=0.01)


def test_a_step_is_judged_on_its_own_samples_only() -> None:
    """Every query's range is the step's own time (capped at ``interval``): traffic of an earlier step
    cannot pass a later one (cf. flagger#1011)."""
    seen: list[str] = []

    def query(q: str) -> float | None:
        seen.append(q)
        return 0.0 if "increase" not in q else 100.0

    settings = Settings(interval="1m", min_samples=10, checks=[{"name": "error-rate", "maxDelta": 0.01}])
    analysis.measure(query, settings, CANARY, BASE, step_seconds=25)
    assert seen and all("[25s]" in q and "[1m]" not in q for q in seen)
    seen.clear()
    analysis.measure(query, settings, CANARY, BASE, step_seconds=600)
    assert all("[60s]" in q for q in seen)


def test_at_the_100_percent_step_relative_checks_use_the_baseline_of_an_earlier_step() -> None:
    """At 100 % the stable version serves nothing: comparing with it had no baseline and failed closed, so
    every canary was rolled back at its last step (cf. flagger#869)."""
    settings = Settings(min_samples=10, checks=[{"name": "latency-p99", "maxRatio": 1.5, "slack": 0.01},
                                                {"name": "error-rate", "maxDelta": 0.01}])
    asked_stable: list[str] = []

    def query(q: str) -> float | None:
        if 'version="1"' in q:
            asked_stable.append(q)
            return None  # no traffic on the stable version
        return 200.0 if "increase" in q else (0.012 if "duration" in q else 0.0)

    results = analysis.measure(query, settings, CANARY, BASE, step_seconds=30,
                               stored_baselines={"latency-p99": 0.010, "error-rate": 0.0})
    assert [m.verdict for m in results] == ["Pass", "Pass"] and asked_stable == []
    assert results[0].baseline == 0.010 and "earlier step" in results[0].message
    # A check no earlier step measured is compared with the stable version before the rollout started.
    before: list[str] = []
    results = analysis.measure(query, settings, CANARY, BASE, step_seconds=30, stored_baselines={},
                               baseline_query=lambda q: before.append(q) or 0.011)
    assert [m.verdict for m in results] == ["Pass", "Pass"] and len(before) == 2
    assert all("[1m]" in q for q in before)  # the full interval before the rollout, not the step's window


def test_a_query_returning_several_series_is_an_error_not_its_first_series() -> None:
    import httpx

    from modelpilot.operator.prometheus import Prometheus

    def handler(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, json={"status": "success", "data": {"resultType": "vector", "result": [
            {"metric": {"pod": "a"}, "value": [0, "0.5"]}, {"metric": {"pod": "b"}, "value": [0, "0.0"]}]}})

    prom = Prometheus("http://prometheus.test", transport=httpx.MockTransport(handler))  # fault injection
    with pytest.raises(PrometheusError, match=r"returned 2 series \(\{pod=\"a\"\}, \{pod=\"b\"\}\).*aggregate"):
        prom.scalar("rate(x[1m])")
    settings = Settings(min_samples=0, checks=[{"name": "custom", "query": "rate(x[{interval}])", "max": 1}])
    results = analysis.measure(lambda q: 100.0 if "increase" in q else prom.scalar(q), settings, CANARY, BASE)
    assert results[0].verdict == "Error" and "2 series" in results[0].message
    assert analysis.overall(results, "hold") == "Inconclusive"  # never a pass
