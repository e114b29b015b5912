"""A model whose server process crashes now and then, for tests and demos (MLflow "model from code").

Every answer is right, so error rate and latency look fine on the requests that reach it; but every
``CRASH_EVERY``-th prediction ends the whole process (as a native library's segfault would), the kubelet
restarts the container, and the requests in flight then never reach any metric. A canary like this must
be rolled back on its restarts (cf. argo-rollouts#3765), not promoted on healthy-looking numbers.
"""

import os

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel

CRASH_EVERY = 40


class CrashingModel(PythonModel):
    def __init__(self) -> None:
        self.calls = 0

    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        self.calls += 1
        if self.calls > 5 and self.calls % CRASH_EVERY == 0:  # the start-up self-checks pass
            os._exit(137)
        return [0] * len(model_input)


mlflow.models.set_model(CrashingModel())
