"""Periodic work without kopf timers: active rollouts, alias polls, ABTest figures.

Part of the operator's handler layer (beside ``handlers``). kopf puts a finalizer on every resource a
timer or daemon runs for, so a ModelVersion following an alias, one in a canary and every ABTest could
not be deleted while the operator was down (cf. nolar/kopf#1074). Instead, watch events tell the ticker
which resources need periodic work (``track`` / ``forget``), and one thread runs what is due on a small
pool — a resource is never ticked twice at once, and nothing is written on the resources themselves.
The state is rebuilt from the watch's initial listing after a restart, so nothing is lost with it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

log = logging.getLogger(__name__)

#: (work kind, namespace, name): "rollout", "alias", "readiness", "retry" (ModelVersions), "abtest", or
#: "memory" (the process's own, with empty namespace and name).
Key = tuple[str, str, str]
Work = Callable[[str, str, str], None]


class Ticker:
    """Runs ``work(kind, namespace, name)`` every ``interval`` seconds for each tracked key.

    ``clock`` is injectable for tests (monotonic seconds).
    """

    def __init__(self, work: Work, workers: int = 4, clock: Callable[[], float] = time.monotonic) -> None:
        self.work = work
        self.clock = clock
        self._due: dict[Key, tuple[float, float]] = {}  # key -> (next due, interval)
        self._running: set[Key] = set()
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="modelpilot-tick")
        self._thread = threading.Thread(target=self._loop, name="modelpilot-ticker", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread.ident is not None:  # started
            self._thread.join(timeout=5)
        self._pool.shutdown(wait=False, cancel_futures=True)

    def track(self, kind: str, namespace: str, name: str, interval: float) -> None:
        """Tick this resource every ``interval`` seconds from now on (a no-op if already tracked alike)."""
        key = (kind, namespace, name)
        with self._lock:
            current = self._due.get(key)
            if current is not None and current[1] == interval:
                return
            self._due[key] = (self.clock() + interval, interval)
        self._wake.set()

    def forget(self, kind: str, namespace: str, name: str) -> None:
        with self._lock:
            self._due.pop((kind, namespace, name), None)

    def interval(self, kind: str, namespace: str, name: str) -> float | None:
        """Seconds between this resource's ticks (None: not tracked)."""
        with self._lock:
            current = self._due.get((kind, namespace, name))
        return current[1] if current is not None else None

    def tracked(self) -> set[Key]:
        with self._lock:
            return set(self._due)

    def due(self) -> list[Key]:
        """Keys whose time has come and that are not running; their next time is set one interval on."""
        now = self.clock()
        out = []
        with self._lock:
            for key, (at, interval) in self._due.items():
                if at <= now and key not in self._running:
                    out.append(key)
                    self._due[key] = (now + interval, interval)
                    self._running.add(key)
        return out

    def _run(self, key: Key) -> None:
        try:
            self.work(*key)
        except Exception:  # noqa: BLE001 - one resource's failure must not stop the others' ticks
            log.exception("periodic %s of %s/%s failed", *key)
        finally:
            with self._lock:
                self._running.discard(key)

    def _loop(self) -> None:
        while not self._stop.is_set():
            for key in self.due():
                self._pool.submit(self._run, key)
            with self._lock:
                upcoming = min((at for at, _ in self._due.values()), default=self.clock() + 1.0)
            self._wake.wait(timeout=max(0.05, min(1.0, upcoming - self.clock())))
            self._wake.clear()
