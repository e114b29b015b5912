"""A deliberately regressing model for demos and tests (MLflow "model from code").

It answers like a classifier for small flowers — so it passes the serving
validation gate on the iris input example — and raises on every row with
petal_length > 3: a new version that looks fine in CI and fails in production.
"""

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class RegressingModel(PythonModel):
    def predict(self, context, model_input: pd.DataFrame, params=None):  # noqa: ANN001, ANN201
        if (model_input["petal_length"] > 3).any():
            raise RuntimeError("simulated regression: this version fails on large flowers")
        return [0] * len(model_input)


mlflow.models.set_model(RegressingModel())
