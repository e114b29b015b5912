"""A fixed zoo of real MLflow models, the kinds users deploy, built on demand.

Used by the serving tests (`tests/unit/test_serve_zoo.py` and friends) and by
`benchmarks/serve_bench.py`, so the benchmark measures exactly the models the
tests prove correct. Every model is trained here on small deterministic data
and saved with MLflow's own `save_model` of its flavor:

| kind               | flavor    | trained on                     | signature                         |
| ------------------ | --------- | ------------------------------ | --------------------------------- |
| `sklearn_frame`    | sklearn   | pandas DataFrame (iris)        | columns (4 doubles)               |
| `sklearn_numpy`    | sklearn   | numpy array (iris)             | tensor float64 [-1, 4]            |
| `pipeline_strings` | sklearn   | DataFrame with a string column | columns (string, long, 2 doubles) |
| `xgboost`          | xgboost   | DataFrame (breast cancer, 10)  | columns (10 doubles)              |
| `lightgbm`         | lightgbm  | DataFrame (breast cancer, 10)  | columns (10 doubles)              |
| `pyfunc_params`    | pyfunc    | —                              | columns + params, string output   |
| `no_signature`     | sklearn   | numpy array (diabetes)         | none, no input example            |
| `wide`             | sklearn   | numpy → DataFrame, 12,000 cols | columns (12,000 doubles)          |

`ZooModel.rows` is a DataFrame of input rows (as a client would send them);
`ZooModel.reference(frame)` is MLflow's own pyfunc scoring of those rows, the
answer every protocol of `modelpilot serve` must match.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

# The first four are the benchmark's kinds (see benchmarks/serve_bench.py).
KINDS = (
    "sklearn_frame",
    "sklearn_numpy",
    "pipeline_strings",
    "xgboost",
    "lightgbm",
    "pyfunc_params",
    "no_signature",
    "wide",
)
WIDE_COLUMNS = 12_000


@dataclass
class ZooModel:
    kind: str
    path: Path
    rows: Any  # pandas.DataFrame of inputs, as a client sends them
    tensor: bool  # the model takes a plain float matrix (tensor signature or none)
    params: dict[str, Any] | None = None  # params to send with requests (pyfunc_params)

    def pyfunc(self) -> Any:
        import mlflow.pyfunc

        return mlflow.pyfunc.load_model(str(self.path))

    def reference(self, frame: Any = None, params: dict[str, Any] | None = None) -> Any:
        """MLflow's own answer for `frame` (default: all `rows`), through pyfunc predict."""
        frame = self.rows if frame is None else frame
        data = frame.to_numpy(dtype=np.float64) if self.tensor else frame
        model = self.pyfunc()
        if params is not None:
            return model.predict(data, params=params)
        return model.predict(data)


def _quiet() -> None:
    warnings.filterwarnings("ignore")


def _iris() -> tuple[Any, Any]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True, as_frame=True)
    return X, y


def _cancer() -> tuple[Any, Any]:
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True, as_frame=True)
    X = X.iloc[:, :10]
    X.columns = [c.replace(" ", "_") for c in X.columns]
    return X, y


def build_sklearn_frame(path: Path) -> ZooModel:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    X, y = _iris()
    clf = LogisticRegression(max_iter=500).fit(X, y)
    mlflow.sklearn.save_model(clf, str(path), input_example=X.head(3), signature=infer_signature(X, clf.predict(X)),
                              pip_requirements=["scikit-learn"])
    return ZooModel("sklearn_frame", path, X.iloc[::7].reset_index(drop=True), tensor=False)


def build_sklearn_numpy(path: Path) -> ZooModel:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.linear_model import LogisticRegression

    X, y = _iris()
    arr = X.to_numpy()
    clf = LogisticRegression(max_iter=500).fit(arr, y.to_numpy())
    mlflow.sklearn.save_model(clf, str(path), input_example=arr[:3], signature=infer_signature(arr, clf.predict(arr)),
                              pip_requirements=["scikit-learn"])
    rows = X.iloc[::7].reset_index(drop=True)
    rows.columns = [f"x{i}" for i in range(arr.shape[1])]
    return ZooModel("sklearn_numpy", path, rows, tensor=True)


def _strings_frame(n: int = 240) -> tuple[Any, Any]:
    import pandas as pd

    rng = np.random.default_rng(7)
    city = rng.choice(["paris", "oslo", "lima", "kyiv"], n)
    age = rng.integers(18, 80, n)
    income = rng.normal(50.0, 15.0, n).round(2)
    score = rng.uniform(0.0, 1.0, n).round(3)
    X = pd.DataFrame({"city": city.astype(object), "age": age.astype(np.int64), "income": income, "score": score})
    y = ((income > 50) ^ (city == "oslo")).astype(int)
    return X, y


def build_pipeline_strings(path: Path) -> ZooModel:
    import mlflow.sklearn
    from mlflow.models import infer_signature
    from sklearn.compose import ColumnTransformer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    X, y = _strings_frame()
    pipe = Pipeline([
        ("prep", ColumnTransformer([
            ("onehot", OneHotEncoder(handle_unknown="ignore"), ["city"]),
            ("scale", StandardScaler(), ["age", "income", "score"]),
        ])),
        ("clf", LogisticRegression(max_iter=500)),
    ]).fit(X, y)
    mlflow.sklearn.save_model(pipe, str(path), input_example=X.head(3), signature=infer_signature(X, pipe.predict(X)),
                              pip_requirements=["scikit-learn"])
    return ZooModel("pipeline_strings", path, X.iloc[::11].reset_index(drop=True), tensor=False)


def build_xgboost(path: Path) -> ZooModel:
    import mlflow.xgboost
    import xgboost as xgb
    from mlflow.models import infer_signature

    X, y = _cancer()
    clf = xgb.XGBClassifier(n_estimators=20, max_depth=3, n_jobs=1, random_state=0).fit(X, y)
    mlflow.xgboost.save_model(clf, str(path), input_example=X.head(3), signature=infer_signature(X, clf.predict(X)),
                              pip_requirements=["xgboost"])
    return ZooModel("xgboost", path, X.iloc[::19].reset_index(drop=True), tensor=False)


def build_lightgbm(path: Path) -> ZooModel:
    import lightgbm as lgb
    import mlflow.lightgbm
    from mlflow.models import infer_signature

    X, y = _cancer()
    clf = lgb.LGBMClassifier(n_estimators=20, num_leaves=7, n_jobs=1, verbose=-1, random_state=0).fit(X, y)
    mlflow.lightgbm.save_model(clf, str(path), input_example=X.head(3), signature=infer_signature(X, clf.predict(X)),
                               pip_requirements=["lightgbm"])
    return ZooModel("lightgbm", path, X.iloc[::19].reset_index(drop=True), tensor=False)


def build_pyfunc_params(path: Path) -> ZooModel:
    import mlflow.pyfunc
    import pandas as pd
    from mlflow.models import infer_signature

    class Labeller(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]  # no hints: MLflow warns on them
            params = params or {}
            threshold = float(params.get("threshold", 0.5))
            prefix = str(params.get("prefix", "label"))
            frame = pd.DataFrame(model_input)
            hot = frame["score"].to_numpy(dtype=float) > threshold
            names = frame["name"].astype(str).to_numpy()
            return [f"{prefix}:{n}:{'hot' if h else 'cold'}" for n, h in zip(names, hot)]

    X = pd.DataFrame({"name": ["ada", "bob", "cy", "dee", "eve", "fay"],
                      "score": [0.1, 0.9, 0.5, 0.7, 0.3, 0.95]})
    params = {"threshold": 0.5, "prefix": "label"}
    model = Labeller()
    out = model.predict(None, X, params)
    mlflow.pyfunc.save_model(str(path), python_model=model, input_example=(X.head(2), params),
                             signature=infer_signature(X, out, params=params), pip_requirements=["pandas"])
    return ZooModel("pyfunc_params", path, X, tensor=False, params={"threshold": 0.6, "prefix": "tag"})


def build_no_signature(path: Path) -> ZooModel:
    import mlflow.sklearn
    import pandas as pd
    from sklearn.datasets import load_diabetes
    from sklearn.linear_model import Ridge

    X, y = load_diabetes(return_X_y=True)
    reg = Ridge(alpha=0.5).fit(X, y)
    mlflow.sklearn.save_model(reg, str(path), pip_requirements=["scikit-learn"])  # no signature, no example
    rows = pd.DataFrame(X[::37], columns=[f"x{i}" for i in range(X.shape[1])])
    return ZooModel("no_signature", path, rows, tensor=True)


def build_wide(path: Path) -> ZooModel:
    import mlflow.sklearn
    import pandas as pd
    from mlflow.models import infer_signature
    from sklearn.linear_model import LinearRegression

    rng = np.random.default_rng(3)
    cols = [f"f{i}" for i in range(WIDE_COLUMNS)]
    X = pd.DataFrame(rng.normal(size=(20, WIDE_COLUMNS)), columns=cols)
    y = rng.normal(size=20)
    reg = LinearRegression().fit(X, y)
    mlflow.sklearn.save_model(reg, str(path), signature=infer_signature(X.head(2), reg.predict(X.head(2))),
                              pip_requirements=["scikit-learn"])
    return ZooModel("wide", path, X.head(3), tensor=False)


BUILDERS: dict[str, Callable[[Path], ZooModel]] = {
    "sklearn_frame": build_sklearn_frame,
    "sklearn_numpy": build_sklearn_numpy,
    "pipeline_strings": build_pipeline_strings,
    "xgboost": build_xgboost,
    "lightgbm": build_lightgbm,
    "pyfunc_params": build_pyfunc_params,
    "no_signature": build_no_signature,
    "wide": build_wide,
}


def build(kind: str, where: Path) -> ZooModel:
    """Train and save the zoo model `kind` into `where/<kind>` (a new directory)."""
    _quiet()
    if kind not in BUILDERS:
        raise ValueError(f"unknown zoo kind {kind!r}; kinds: {', '.join(KINDS)}")
    return BUILDERS[kind](where / kind)


# ----------------------------------------------------------------------------- request bodies


def invocations_bodies(model: ZooModel, frame: Any = None) -> dict[str, Any]:
    """Every MLflow scoring-protocol JSON format a client may send for `frame`, by format name.

    For column models also `inputs_rows` / `instances_rows`: the rows without
    column names, values in signature order (what a v2 `[rows, n]` tensor
    carries). MLflow's own server refuses these for a model with named
    columns; modelpilot reads them positionally, as v2 does.
    """
    frame = model.rows if frame is None else frame
    bodies: dict[str, Any]
    if model.tensor:
        matrix = frame.to_numpy(dtype=np.float64).tolist()
        bodies = {"instances": {"instances": matrix}, "inputs": {"inputs": matrix}}
    else:
        split = {"columns": list(frame.columns), "data": _rows(frame)}
        records = [dict(zip(frame.columns, r)) for r in _rows(frame)]
        bodies = {
            "dataframe_split": {"dataframe_split": split},
            "dataframe_records": {"dataframe_records": records},
            "instances": {"instances": records},
            "inputs": {"inputs": {c: _column(frame[c]) for c in frame.columns}},
            "inputs_rows": {"inputs": _rows(frame)},
            "instances_rows": {"instances": _rows(frame)},
        }
    if model.params is not None:
        bodies = {k: {**v, "params": model.params} for k, v in bodies.items()}
    return bodies


def v2_bodies(model: ZooModel, frame: Any = None) -> dict[str, Any]:
    """Open Inference Protocol v2 request bodies: one tensor per column, and (numeric models) one matrix."""
    frame = model.rows if frame is None else frame
    bodies: dict[str, Any] = {}
    n = len(frame)
    numeric = all(frame[c].dtype.kind in "fiu" for c in frame.columns)
    if numeric:
        matrix = frame.to_numpy(dtype=np.float64)
        bodies["matrix"] = {"inputs": [{"name": "input-0", "shape": [n, matrix.shape[1]], "datatype": "FP64",
                                        "data": matrix.reshape(-1).tolist()}]}
    if not model.tensor:
        bodies["columns"] = {"inputs": [
            {"name": str(c), "shape": [n], "datatype": _v2_type(frame[c]), "data": _column(frame[c])}
            for c in frame.columns
        ]}
    if model.params is not None:
        bodies = {k: {**v, "parameters": model.params} for k, v in bodies.items()}
    return bodies


def _v2_type(series: Any) -> str:
    kind = series.dtype.kind
    return {"f": "FP64", "i": "INT64", "u": "INT64", "b": "BOOL"}.get(kind, "BYTES")


def _column(series: Any) -> list[Any]:
    return [v.item() if isinstance(v, np.generic) else v for v in series.tolist()]


def _rows(frame: Any) -> list[list[Any]]:
    return [[v.item() if isinstance(v, np.generic) else v for v in row] for row in frame.itertuples(index=False)]
