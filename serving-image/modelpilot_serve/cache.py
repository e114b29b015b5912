"""Inference cache: identical inputs to the same model version are answered from memory.

Where it sits: used by `runner.CachingRunner`, in front of the batcher. Two
backends behind one interface:

* `LocalCache` — in-process LRU with a TTL (`OrderedDict`; the clock is
  injectable so tests move time instead of sleeping).
* `RedisCache` — shared by all replicas through Redis (`redis.asyncio`);
  entries expire in Redis (`SET … PX ttl`), size is bounded by Redis's own
  `maxmemory` policy. A Redis failure is never a failed request: it counts
  as a miss (and in `modelpilot_cache_errors_total`) and the model answers.

Keys are a BLAKE2b digest over the model identity (name, version and the
MLmodel's `model_uuid`, so `unknown` versions of different models never
share entries) and the canonical bytes of the input: for the fast path the
float64 matrix (so `1` and `1.0`, or columns in another order, are one
entry); for pyfunc inputs the frame's columns, dtypes and per-row hashes.
Inputs that have no canonical form are not cached. Only correct for
deterministic models — which is why the cache is off by default.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import logging
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import orjson

from .logs import event
from .metrics import ServeMetrics
from .model import FrameInput, MatrixInput, ModelInput, PyfuncInput, ServedModel

log = logging.getLogger(__name__)

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Hit:
    value: Any


class PredictionCache(Protocol):
    def key(self, model: ServedModel, inp: ModelInput) -> str | None: ...

    async def get(self, key: str) -> Hit | None: ...

    def put_nowait(self, key: str, value: Any) -> None: ...

    async def close(self) -> None: ...


def cache_key(identity: str, inp: ModelInput) -> str | None:
    """A digest of the model identity and the canonical input, or None if it has none."""
    h = hashlib.blake2b(identity.encode(), digest_size=20)
    if isinstance(inp, MatrixInput):
        m = inp.matrix
        h.update(b"m")
        h.update(np.asarray(m.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(m, dtype=np.float64).tobytes())
        return h.hexdigest()
    if isinstance(inp, FrameInput):
        h.update(b"c")
        try:
            h.update(orjson.dumps({k: (v.tolist() if isinstance(v, np.ndarray) else v) for k, v in inp.columns.items()}))
        except TypeError:  # values orjson cannot write (e.g. bytes): not cacheable
            return None
    elif not _update_with(h, inp.data):
        return None
    if inp.params is not None:
        try:
            h.update(orjson.dumps(inp.params, option=orjson.OPT_SORT_KEYS))
        except TypeError:
            return None
    return h.hexdigest()


def _update_with(h: Any, data: Any) -> bool:
    import pandas as pd

    if isinstance(data, pd.DataFrame):
        h.update(b"f")
        h.update(orjson.dumps([str(c) for c in data.columns]))
        h.update(orjson.dumps([str(t) for t in data.dtypes]))
        try:
            rows = pd.util.hash_pandas_object(data, index=False)
        except TypeError:  # unhashable cells (lists, dicts)
            return False
        h.update(rows.to_numpy().tobytes())
        return True
    if isinstance(data, np.ndarray):
        if data.dtype.kind not in "biufU":
            return False
        h.update(b"a" + data.dtype.str.encode())
        h.update(np.asarray(data.shape, dtype=np.int64).tobytes())
        h.update(np.ascontiguousarray(data).tobytes())
        return True
    if isinstance(data, dict):
        h.update(b"d")
        for k in sorted(data, key=str):
            h.update(str(k).encode() + b"\0")
            if not _update_with(h, np.asarray(data[k])):
                return False
        return True
    return False


def model_identity(model_name: str, model_version: str, model: ServedModel) -> str:
    return f"{model_name}\0{model_version}\0{model.model_uuid or model.uri}"


class LocalCache:
    """In-process LRU + TTL."""

    def __init__(self, identity: Callable[[ServedModel], str], max_entries: int, ttl_seconds: float,
                 clock: Clock = time.monotonic) -> None:
        self._identity = identity
        self.max_entries = max_entries
        self.ttl = ttl_seconds
        self.clock = clock
        self._entries: OrderedDict[str, tuple[float, Any]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def key(self, model: ServedModel, inp: ModelInput) -> str | None:
        return cache_key(self._identity(model), inp)

    async def get(self, key: str) -> Hit | None:
        return self.get_now(key)

    def get_now(self, key: str) -> Hit | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        expires, value = entry
        if expires <= self.clock():
            del self._entries[key]
            return None
        self._entries.move_to_end(key)
        return Hit(value)

    def put_nowait(self, key: str, value: Any) -> None:
        entries = self._entries
        entries[key] = (self.clock() + self.ttl, value)
        entries.move_to_end(key)
        while len(entries) > self.max_entries:
            entries.popitem(last=False)

    async def close(self) -> None:
        self._entries.clear()


class RedisCache:
    """Shared cache in Redis; values are numpy arrays (np.save format, never pickle)."""

    def __init__(self, identity: Callable[[ServedModel], str], url: str, ttl_seconds: float,
                 metrics: ServeMetrics, prefix: str = "modelpilot:cache:") -> None:
        import redis.asyncio as aioredis

        self._identity = identity
        self.ttl_ms = max(1, int(ttl_seconds * 1000))
        self.metrics = metrics
        self.prefix = prefix
        # Short timeouts: a slow Redis must cost a miss, not a slow answer.
        self.client = aioredis.Redis.from_url(url, socket_timeout=0.25, socket_connect_timeout=0.5)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_error_log = 0.0

    def key(self, model: ServedModel, inp: ModelInput) -> str | None:
        digest = cache_key(self._identity(model), inp)
        return None if digest is None else self.prefix + digest

    def _failed(self, what: str, exc: Exception) -> None:
        self.metrics.cache_error()
        now = time.monotonic()
        if now - self._last_error_log > 10:  # at most one log line per 10 s
            self._last_error_log = now
            event(log, logging.WARNING, "cache backend failed; serving uncached", op=what,
                  error=f"{type(exc).__name__}: {exc}")

    async def get(self, key: str) -> Hit | None:
        try:
            raw = await self.client.get(key)
        except Exception as exc:  # noqa: BLE001 - any Redis failure is a miss
            self._failed("get", exc)
            return None
        if raw is None:
            return None
        try:
            return Hit(decode_value(raw if isinstance(raw, bytes) else raw.encode()))
        except Exception as exc:  # noqa: BLE001 - a corrupt entry is a miss
            self._failed("decode", exc)
            return None

    def put_nowait(self, key: str, value: Any) -> None:
        raw = encode_value(value)
        if raw is None:
            return
        task = asyncio.get_running_loop().create_task(self._put(key, raw))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _put(self, key: str, raw: bytes) -> None:
        try:
            await self.client.set(key, raw, px=self.ttl_ms)
        except Exception as exc:  # noqa: BLE001
            self._failed("set", exc)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()


def encode_value(value: Any) -> bytes | None:
    """An ndarray of numbers, booleans or strings as .npy bytes; None for anything else."""
    if not isinstance(value, np.ndarray) or value.dtype.kind not in "biufU":
        return None
    buf = io.BytesIO()
    np.save(buf, value, allow_pickle=False)
    return buf.getvalue()


def decode_value(raw: bytes) -> np.ndarray:
    return np.asarray(np.load(io.BytesIO(raw), allow_pickle=False))
