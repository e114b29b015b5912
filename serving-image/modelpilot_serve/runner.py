"""Where predictions are executed: direct, micro-batched, cached.

Where it sits: the app hands every decoded `ModelInput` to a `Runner`, never
to the model directly. Runners stack: `CachingRunner(BatchingRunner(...))`.

* `DirectRunner` scores small fast-path inputs inline on the event loop (a
  thread hop costs about as much as the prediction itself) and everything
  else in the thread pool, so a heavy pyfunc model or a large batch never
  stalls health probes.
* `BatchingRunner` — adaptive micro-batching, two lanes:
  - pyfunc inputs (`FrameInput`: column models of any column types, any
    pyfunc) go to a per-model lane with one batch in flight, predicted off
    the event loop: while a batch is being scored, arriving requests queue,
    and the next batch takes all of them (same columns and params, at most
    `max_batch_size` rows). An idle server adds no wait; a busy one scores
    bigger batches — MLflow's schema enforcement and the model's per-call
    overhead are paid once per batch instead of once per request.
  - fast-path inputs (`MatrixInput`). A request joins a queue; the queue is flushed on the next
  turn of the event loop, so every request that was parsed in the same turn
  shares one `np.vstack` and one estimator call, and a request that is alone
  waits for nothing. It waits longer (at most `max_latency`) only for
  requests *known* to be on their way: requests the app has admitted
  (`enter`) that are still reading their body or waiting for the cache. A
  batch never exceeds `max_batch_size` rows. If a batched call fails, every
  request is retried alone, so one bad input cannot fail its neighbours.
* `CachingRunner` — answers repeated inputs from a `cache.PredictionCache`.

The app brackets each inference request with `enter()` / `leave()`; those
counts are what lets the batcher tell "alone" from "others are coming".
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
from starlette.concurrency import run_in_threadpool

from .model import FrameInput, MatrixInput, ModelInput, PyfuncInput, ServedModel, split_output

if TYPE_CHECKING:  # pragma: no cover
    from .cache import PredictionCache
    from .metrics import ServeMetrics

log = logging.getLogger(__name__)

# Above this many rows even the fast path leaves the event loop.
INLINE_MAX_ROWS = 256


class Runner(Protocol):
    def enter(self) -> None: ...

    def leave(self) -> None: ...

    async def run(self, model: ServedModel, inp: ModelInput) -> Any: ...

    async def close(self) -> None: ...


class DirectRunner:
    def enter(self) -> None:
        pass

    def leave(self) -> None:
        pass

    async def run(self, model: ServedModel, inp: ModelInput) -> Any:
        if isinstance(inp, MatrixInput) and inp.rows <= INLINE_MAX_ROWS:
            return model.predict(inp)
        return await run_in_threadpool(model.predict, inp)

    async def close(self) -> None:
        pass


@dataclass(slots=True)
class _Waiting:
    model: ServedModel
    inp: MatrixInput
    future: asyncio.Future[Any]


@dataclass(slots=True)
class _Queue:
    items: list[_Waiting] = field(default_factory=list)
    rows: int = 0


class BatchingRunner:
    """Adaptive micro-batching in front of `DirectRunner` (see the module docstring)."""

    def __init__(self, metrics: ServeMetrics, max_batch_size: int = 64, max_latency_s: float = 0.005) -> None:
        self.metrics = metrics
        self.max_batch_size = max_batch_size
        self.max_latency_s = max_latency_s
        self._direct = DirectRunner()
        self._queue = _Queue()
        self._admitted = 0  # requests inside the app's inference handlers
        self._in_runner = 0  # of those, inside `run` (queued, predicting, or on the direct path)
        self._flush_scheduled = False
        self._timer: asyncio.TimerHandle | None = None  # set while waiting for requests on their way
        self._tasks: set[asyncio.Task[None]] = set()
        self._lanes: dict[int, _FrameLane] = {}

    # ---- admission bookkeeping (called by the app around every inference request)

    def enter(self) -> None:
        self._admitted += 1

    def leave(self) -> None:
        self._admitted -= 1
        # A request that left without reaching the runner (an error, a cache
        # hit) may have been the one the queue was waiting for.
        self._maybe_stop_waiting()

    def _on_their_way(self) -> int:
        return self._admitted - self._in_runner

    # ---- run

    async def run(self, model: ServedModel, inp: ModelInput) -> Any:
        self._in_runner += 1
        try:
            key = model.batch_key(inp) if model.batching and not isinstance(inp, MatrixInput) else None
            if key is not None and not isinstance(inp, MatrixInput) and inp.rows < self.max_batch_size:
                self._maybe_stop_waiting()
                lane = self._lanes.get(id(model))
                if lane is None or lane.model is not model:
                    lane = self._lanes[id(model)] = _FrameLane(model, self.max_batch_size, self.metrics)
                return await lane.submit(inp, key)
            if not isinstance(inp, MatrixInput) or inp.rows >= self.max_batch_size:
                self._maybe_stop_waiting()
                self.metrics.observe_batch(inp.rows)
                return await self._direct.run(model, inp)
            return await self._join(model, inp)
        finally:
            self._in_runner -= 1

    async def _join(self, model: ServedModel, inp: MatrixInput) -> Any:
        q = self._queue
        if q.items and (q.rows + inp.rows > self.max_batch_size or q.items[0].model is not model):
            self._flush()  # full (or another model): send what is queued, start a new batch
            q = self._queue
        waiting = _Waiting(model, inp, asyncio.get_running_loop().create_future())
        q.items.append(waiting)
        q.rows += inp.rows
        if q.rows >= self.max_batch_size:
            self._flush()
        elif not self._flush_scheduled:
            self._schedule_flush()
        else:
            self._maybe_stop_waiting()
        return await waiting.future

    def _schedule_flush(self) -> None:
        loop = asyncio.get_running_loop()
        self._flush_scheduled = True
        if self._on_their_way() <= 0 or self.max_latency_s <= 0:
            # Nobody else is known to be coming: go on the next loop turn,
            # after every request already parsed in this turn has queued.
            loop.call_soon(self._flush_if_queued)
        else:
            # Others were admitted and are still reading bodies or awaiting the
            # cache: give them up to max_latency to join. The last of them to
            # arrive (or leave) ends the wait early (`_maybe_stop_waiting`).
            self._timer = loop.call_later(self.max_latency_s, self._flush_if_queued)

    def _maybe_stop_waiting(self) -> None:
        if self._timer is not None and self._queue.items and self._on_their_way() <= 0:
            self._timer.cancel()
            self._timer = None
            asyncio.get_running_loop().call_soon(self._flush_if_queued)

    def _flush_if_queued(self) -> None:
        if self._queue.items:
            self._flush()
        else:
            self._reset_schedule()

    def _reset_schedule(self) -> None:
        self._flush_scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def _flush(self) -> None:
        batch = self._queue
        self._queue = _Queue()
        self._reset_schedule()
        if not batch.items:
            return
        if batch.rows > INLINE_MAX_ROWS:
            task = asyncio.get_running_loop().create_task(self._predict_off_loop(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        else:
            self._predict(batch, None)

    async def _predict_off_loop(self, batch: _Queue) -> None:
        output: Any
        try:
            output = await run_in_threadpool(batch.items[0].model.predict, MatrixInput(_stack(batch)))
        except Exception as exc:  # noqa: BLE001 - handled below: one call per request
            output = exc
        self._predict(batch, output, retry_off_loop=True)

    def _predict(self, batch: _Queue, precomputed: Any, retry_off_loop: bool = False) -> None:
        items = batch.items
        model = items[0].model
        if len(items) == 1 and precomputed is None:
            self.metrics.observe_batch(batch.rows)
            _settle(items[0].future, model, items[0].inp)
            return
        output = precomputed
        if output is None:
            try:
                output = model.predict(MatrixInput(_stack(batch)))
            except Exception as exc:  # noqa: BLE001 - handled below: one call per request
                output = exc
        if isinstance(output, np.ndarray) and output.ndim >= 1 and output.shape[0] == batch.rows:
            self.metrics.observe_batch(batch.rows)
            start = 0
            for w in items:
                end = start + w.inp.rows
                if not w.future.done():
                    w.future.set_result(output[start:end])
                start = end
            return
        # The batched call failed, or its output cannot be split by rows:
        # score every request alone, so an error lands on the request that caused it.
        for w in items:
            self.metrics.observe_batch(w.inp.rows)
            if retry_off_loop and w.inp.rows > INLINE_MAX_ROWS:
                task = asyncio.get_running_loop().create_task(_settle_off_loop(w.future, model, w.inp))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
            else:
                _settle(w.future, model, w.inp)

    async def close(self) -> None:
        if self._queue.items:
            self._flush()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        for lane in self._lanes.values():
            await lane.close()


class _FrameLane:
    """One model's pyfunc batches: one in flight, the next formed from whatever queued meanwhile."""

    def __init__(self, model: ServedModel, max_rows: int, metrics: ServeMetrics) -> None:
        self.model = model
        self.max_rows = max_rows
        self.metrics = metrics
        self._queue: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, inp: FrameInput | PyfuncInput, key: tuple[Any, ...]) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queue.append((inp, key, future))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.get_running_loop().create_task(self._drain())
        return await future

    def _take(self) -> list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]]:
        """The oldest waiting request plus every queued one that fits with it (same batch key)."""
        live = [item for item in self._queue if not item[2].done()]  # done: the client went away
        if not live:
            self._queue = []
            return []
        key = live[0][1]
        batch: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = []
        rest: list[tuple[Any, tuple[Any, ...], asyncio.Future[Any]]] = []
        rows = 0
        for item in live:
            if not batch or (item[1] == key and rows + item[0].rows <= self.max_rows):
                batch.append(item)
                rows += item[0].rows
            else:
                rest.append(item)
        self._queue = rest
        return batch

    async def _drain(self) -> None:
        while self._queue:
            batch = self._take()
            if not batch:
                continue
            inputs = [i for i, _, _ in batch]
            self.metrics.observe_batch(sum(i.rows for i in inputs))
            try:
                results = await run_in_threadpool(_score_batch, self.model, inputs)
            except BaseException as exc:  # noqa: BLE001 - cancelled while scoring: fail the waiting requests
                for _, _, fut in batch:
                    if not fut.done():
                        fut.set_exception(exc if isinstance(exc, Exception) else RuntimeError("cancelled"))
                raise
            for (_, _, fut), result in zip(batch, results):
                if fut.done():
                    continue
                if isinstance(result, _Failed):
                    fut.set_exception(result.exc)
                else:
                    fut.set_result(result)

    async def close(self) -> None:
        if self._worker is not None:
            await asyncio.gather(self._worker, return_exceptions=True)


@dataclass(slots=True)
class _Failed:
    exc: Exception


def _score_batch(model: ServedModel, inputs: list[Any]) -> list[Any]:
    """One predict for the batch, split by rows; if that fails or cannot be split, one predict each.

    Runs in a worker thread. Scoring one by one after a failed batch puts each
    error on the request that caused it, so one bad input never fails its
    neighbours.
    """
    if len(inputs) > 1:
        try:
            parts = split_output(model.predict_many(inputs), [i.rows for i in inputs])
        except Exception:  # noqa: BLE001 - retried one by one below
            parts = None
        if parts is not None:
            return parts
    results: list[Any] = []
    for inp in inputs:
        try:
            results.append(model.predict(inp))
        except Exception as exc:  # noqa: BLE001 - delivered to the waiting request
            results.append(_Failed(exc))
    return results


def _stack(batch: _Queue) -> np.ndarray:
    return np.vstack([w.inp.matrix for w in batch.items])


def _settle(future: asyncio.Future[Any], model: ServedModel, inp: MatrixInput) -> None:
    if future.done():  # the client went away and the handler was cancelled
        return
    try:
        future.set_result(model.predict(inp))
    except Exception as exc:  # noqa: BLE001 - delivered to the waiting request
        future.set_exception(exc)


async def _settle_off_loop(future: asyncio.Future[Any], model: ServedModel, inp: MatrixInput) -> None:
    try:
        result = await run_in_threadpool(model.predict, inp)
    except Exception as exc:  # noqa: BLE001 - delivered to the waiting request
        if not future.done():
            future.set_exception(exc)
        return
    if not future.done():
        future.set_result(result)


class CachingRunner:
    """Answer repeated inputs from the cache; everything else goes to `inner`."""

    def __init__(self, inner: Runner, cache: PredictionCache, metrics: ServeMetrics) -> None:
        self.inner = inner
        self.cache = cache
        self.metrics = metrics

    def enter(self) -> None:
        self.inner.enter()

    def leave(self) -> None:
        self.inner.leave()

    async def run(self, model: ServedModel, inp: ModelInput) -> Any:
        key = self.cache.key(model, inp)
        if key is None:  # an input the cache cannot key (e.g. arbitrary objects)
            return await self.inner.run(model, inp)
        found = await self.cache.get(key)
        self.metrics.cache_result(found is not None)
        if found is not None:
            return found.value
        output = await self.inner.run(model, inp)
        # Stored without awaiting: a Redis round trip must not delay the
        # answer, nor hold this request "on its way" for the batcher.
        self.cache.put_nowait(key, output)
        return output

    async def close(self) -> None:
        await self.inner.close()
        await self.cache.close()
