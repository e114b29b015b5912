"""The ticker that replaced kopf timers (which put finalizers on resources): fake clock, real threads."""

from __future__ import annotations

import threading
import time

from modelpilot.operator.ticker import Ticker


def test_tracked_keys_run_at_their_interval_and_forgotten_ones_stop() -> None:
    now = [0.0]
    ticker = Ticker(lambda *key: None, clock=lambda: now[0])
    ticker.track("rollout", "ns", "a", 5)
    ticker.track("alias", "ns", "a", 30)
    assert ticker.due() == []
    now[0] = 5.0
    assert ticker.due() == [("rollout", "ns", "a")]
    ticker._running.clear()  # the work finished
    now[0] = 9.9
    assert ticker.due() == []
    now[0] = 30.0
    assert set(ticker.due()) == {("rollout", "ns", "a"), ("alias", "ns", "a")}
    ticker._running.clear()
    ticker.forget("rollout", "ns", "a")
    now[0] = 60.0
    assert ticker.due() == [("alias", "ns", "a")]


def test_tracking_again_with_the_same_interval_keeps_the_schedule() -> None:
    now = [0.0]
    ticker = Ticker(lambda *key: None, clock=lambda: now[0])
    ticker.track("rollout", "ns", "a", 5)
    now[0] = 4.0
    ticker.track("rollout", "ns", "a", 5)  # every watch event calls track: it must not postpone the tick
    now[0] = 5.0
    assert ticker.due() == [("rollout", "ns", "a")]


def test_a_key_never_runs_twice_at_once_and_a_failure_does_not_stop_the_others() -> None:
    calls: list[tuple[str, str, str]] = []
    slow = threading.Event()

    def work(kind: str, namespace: str, name: str) -> None:
        calls.append((kind, namespace, name))
        if name == "slow":
            slow.wait(2)
        if name == "broken":
            raise RuntimeError("boom")

    ticker = Ticker(work)
    for name in ("slow", "broken", "fine"):
        ticker.track("rollout", "ns", name, 0.05)
    ticker.start()
    try:
        time.sleep(0.6)
    finally:
        slow.set()
        ticker.stop()
    assert calls.count(("rollout", "ns", "slow")) == 1  # still running: not started again
    assert calls.count(("rollout", "ns", "broken")) > 2 and calls.count(("rollout", "ns", "fine")) > 2
