"""Rows without column names: `/invocations` and v2 read them the same way, or refuse them the same way.

A new user sent `{"inputs": [[5.1, 3.5, 1.4, 0.2]]}` to an iris model trained
on a DataFrame: `/invocations` refused it while a v2 `[1, 4]` tensor of the
same values was scored. Both protocols now read unnamed rows as the
signature's columns in order (through the one predict core) and refuse a
row of the wrong width with a 400 naming the widths. Every zoo model is also
scored with such bodies in `test_serve_zoo.py` (`inputs_rows`,
`instances_rows`).

Real models, real servers on loopback (conftest); nothing is mocked.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zoo

MODEL = "zoo"

_built: dict[str, zoo.ZooModel] = {}


@pytest.fixture(scope="module")
def zoo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo-positional")


def _model(kind: str, where: Path) -> zoo.ZooModel:
    if kind not in _built:
        _built[kind] = zoo.build(kind, where)
    return _built[kind]


def _rows(frame: Any) -> list[list[Any]]:
    return [[v.item() if isinstance(v, np.generic) else v for v in row] for row in frame.itertuples(index=False)]


def _v2_matrix(rows: list[list[float]], datatype: str = "FP64") -> dict[str, Any]:
    width = len(rows[0])
    return {"inputs": [{"name": "input-0", "shape": [len(rows), width], "datatype": datatype,
                        "data": [v for r in rows for v in r]}]}


def _v2_data(resp: Any) -> list[Any]:
    assert resp.status_code == 200, resp.text
    return list(resp.json()["outputs"][0]["data"])


def test_mlflow_itself_refuses_unnamed_rows_for_a_named_column_model(zoo_dir: Path) -> None:
    """Why accepting them changes no answer MLflow gives: MLflow's parser and pyfunc refuse them.

    If a future MLflow starts accepting them, this fails, and the positional
    reading must then be checked against MLflow's answer.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.pyfunc.scoring_server import infer_and_parse_data

    model = _model("sklearn_frame", zoo_dir)
    pyfunc = model.pyfunc()
    for fmt in ("inputs", "instances"):
        data = infer_and_parse_data({fmt: _rows(model.rows)}, pyfunc.metadata.get_input_schema())
        with pytest.raises(MlflowException, match="missing inputs"):
            pyfunc.predict(data)


@pytest.mark.parametrize("kind", ["sklearn_frame", "xgboost", "lightgbm"])
def test_unnamed_rows_score_as_the_v2_matrix_and_as_named_columns(
    kind: str, zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    model = _model(kind, zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    rows = _rows(model.rows)
    reference = np.asarray(model.reference()).tolist()  # MLflow's answer for the same rows, named
    v2 = _v2_data(srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(rows)))
    assert v2 == reference
    for fmt in ("inputs", "instances"):
        resp = srv.post("/invocations", json={fmt: rows})
        assert resp.status_code == 200, f"{kind} {fmt}: {resp.text}"
        assert resp.json()["predictions"] == reference, fmt


def test_wrong_width_is_a_400_naming_the_widths_on_both_protocols(
    zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    model = _model("sklearn_frame", zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    names = list(model.rows.columns)
    for width in (3, 5):
        row = [5.1, 3.5, 1.4, 0.2, 1.0][:width]
        for fmt in ("inputs", "instances"):
            resp = srv.post("/invocations", json={fmt: [row]})
            assert resp.status_code == 400, resp.text
            error = resp.json()["error"]
            assert f"row 0 has {width} values" in error and "(4: " in error and names[0] in error, error
        v2 = srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix([row]))
        assert v2.status_code == 400 and f"[1, {width}]" in v2.json()["error"] and "[rows, 4]" in v2.json()["error"]
    # A ragged request names the row that is off.
    resp = srv.post("/invocations", json={"inputs": [[5.1, 3.5, 1.4, 0.2], [5.1, 3.5, 1.4]]})
    assert resp.status_code == 400 and "row 1 has 3 values" in resp.json()["error"], resp.text


def test_a_pipeline_with_a_string_column_reads_rows_in_signature_order(
    zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    """Mixed rows stay mixed: each value is typed by its column (MLflow's parser would make the
    whole row strings), and a value in the wrong position is a 400 naming the column."""
    model = _model("pipeline_strings", zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    assert list(model.rows.columns) == ["city", "age", "income", "score"]
    rows = _rows(model.rows)
    reference = np.asarray(model.reference()).tolist()
    for fmt in ("inputs", "instances"):
        resp = srv.post("/invocations", json={fmt: rows})
        assert resp.status_code == 200, resp.text
        assert resp.json()["predictions"] == reference
    # The city where the age belongs: the long column 'age' cannot hold "paris".
    swapped = [[30, "paris", 50.0, 0.5]]
    resp = srv.post("/invocations", json={"inputs": swapped})
    assert resp.status_code == 400, resp.text
    assert "age" in resp.json()["error"], resp.text
    # A fraction in the integer column is refused by name, as for named input.
    resp = srv.post("/invocations", json={"inputs": [["paris", 30.5, 50.0, 0.5]]})
    assert resp.status_code == 400 and "'age'" in resp.json()["error"], resp.text
    resp = srv.post("/invocations", json={"inputs": [["paris", 30, 50.0]]})
    assert resp.status_code == 400 and "row 0 has 3 values" in resp.json()["error"], resp.text


def test_a_pyfunc_with_params_reads_rows_in_signature_order(
    zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    model = _model("pyfunc_params", zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    params = {"threshold": 0.6, "prefix": "tag"}
    resp = srv.post("/invocations", json={"inputs": _rows(model.rows), "params": params})
    assert resp.status_code == 200, resp.text
    assert resp.json()["predictions"] == list(model.reference(params=params))


def test_a_model_without_signature_takes_rows_as_they_are_on_both_protocols(
    zoo_dir: Path, serve_launch: Any, serve_helpers: Any
) -> None:
    """No signature, no names to map to: the rows are the model's matrix, and a wrong width is the
    model's own complaint (a 422 naming both widths), the same on both protocols."""
    model = _model("no_signature", zoo_dir)
    srv = serve_launch(serve_helpers.settings(model.path, model_name=MODEL))
    rows = model.rows.to_numpy(dtype=np.float64).tolist()
    reference = np.asarray(model.reference()).tolist()
    resp = srv.post("/invocations", json={"inputs": rows})
    assert resp.status_code == 200 and np.allclose(resp.json()["predictions"], reference), resp.text
    assert np.allclose(_v2_data(srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(rows))), reference)
    short = [r[:9] for r in rows]
    inv = srv.post("/invocations", json={"inputs": short})
    v2 = srv.post(f"/v2/models/{MODEL}/infer", json=_v2_matrix(short))
    for resp in (inv, v2):
        assert resp.status_code == 422, resp.text
        assert "9 features" in resp.json()["error"] and "expecting 10" in resp.json()["error"], resp.text
