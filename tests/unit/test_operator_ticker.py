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


def test_periodic_runs_happen_on_the_operators_event_loop_and_stopping_releases_the_ticker_threads() -> None:
    """The reconcilers are coroutines on kopf's loop; the ticker's threads hand each periodic run to that loop
    and wait. Stopping the operator cancels what they wait on, so no thread is left blocked at exit."""
    import asyncio

    from modelpilot.operator.core import OperatorCore
    from modelpilot.operator.settings import OperatorSettings

    from tests.unit.test_operator_paths import FakeKube, mv_body

    core = OperatorCore(OperatorSettings.of(mlflow={"tracking_uri": "http://mlflow:5000"}),
                        FakeKube(mv_body("1")))  # type: ignore[arg-type]
    ran_on: list[int] = []
    waiting = threading.Event()
    returned = threading.Event()

    async def tick(kind: str, namespace: str, name: str) -> None:
        ran_on.append(threading.get_ident())
        if kind == "hang":
            waiting.set()
            await asyncio.Event().wait()  # a run that would never end by itself

    core.tick = tick  # type: ignore[method-assign]

    def from_thread(kind: str) -> None:
        core._tick_from_thread(kind, "ns", "a")  # noqa: SLF001 — the bridge under test
        if kind == "hang":
            returned.set()

    async def scenario() -> None:
        core.start(lambda ns, name: None)
        loop_thread = threading.get_ident()
        await asyncio.to_thread(from_thread, "rollout")
        assert ran_on == [loop_thread]
        worker = threading.Thread(target=from_thread, args=("hang",), daemon=True)
        worker.start()
        assert await asyncio.to_thread(waiting.wait, 5)
        await core.stop()
        assert await asyncio.to_thread(returned.wait, 5), "the ticker thread is still blocked after stop()"
        from_thread("rollout")  # after stop: nothing runs
        assert len(ran_on) == 2

    asyncio.run(scenario())
