"""Where predictions are executed: the seam for batching and caching.

Where it sits: the app hands every decoded `ModelInput` to a `Runner`, never
to the model directly. Today's `DirectRunner` scores small fast-path inputs
inline on the event loop (a thread hop costs about as much as the prediction
itself) and everything else in the thread pool, so a heavy pyfunc model or a
large batch never stalls health probes. A batching runner (collect
`MatrixInput`s for a few hundred microseconds, one `np.vstack`, one estimator
call, split the result) or a caching runner implements the same protocol.
"""

from __future__ import annotations

from typing import Any, Protocol

from starlette.concurrency import run_in_threadpool

from .model import MatrixInput, ModelInput, ServedModel

# Above this many rows even the fast path leaves the event loop.
INLINE_MAX_ROWS = 256


class Runner(Protocol):
    async def run(self, model: ServedModel, inp: ModelInput) -> Any: ...


class DirectRunner:
    async def run(self, model: ServedModel, inp: ModelInput) -> Any:
        if isinstance(inp, MatrixInput) and inp.rows <= INLINE_MAX_ROWS:
            return model.predict(inp)
        return await run_in_threadpool(model.predict, inp)
