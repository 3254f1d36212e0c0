"""benchmarks/compare.py: the cells of a data set (model budgets and their backprop
references), the aggregation of seeds into rows, the per-data-set model settings, and one real
cell of each kind (a learner that runs, one that cannot apply)."""
import argparse
import importlib.util
import math
from pathlib import Path

import numpy as np
import pytest

PATH = Path(__file__).resolve().parents[1] / "benchmarks" / "compare.py"


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare_under_test", PATH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def args(**kw):
    base = dict(seeds=[0, 1], epochs=None, model_epochs=None, learners=["dtp_ai"],
                models=["two_phase", "cdtp"])
    return argparse.Namespace(**{**base, **kw})


def test_each_model_budget_gets_its_backprop_reference(compare, monkeypatch):
    monkeypatch.setitem(compare.MODEL_SETTINGS, ("digits", "cdtp"), dict(budget=(1, 100)))
    cells = compare.cells_for("digits", args())
    spec = compare.DATASETS["digits"]
    default = (spec["model_epochs"], spec["model_train"])
    for seed in (0, 1):
        mine = {c[2]: c for c in cells if c[1] == seed}
        assert mine["backprop"][4:] == (spec["epochs"], None)
        assert mine["two_phase"][3:] == ("model", *default)
        assert mine["cdtp"][3:] == ("model", 1, 100)
        assert mine["backprop (model budget)"][3:] == ("learner", *default)
        assert mine["backprop (budget of cdtp)"][3:] == ("learner", 1, 100)
    assert len(cells) == 2 * 6


def test_rows_average_seeds_and_time_against_backprop_of_the_same_seed(compare, monkeypatch):
    monkeypatch.setitem(compare.MODEL_SETTINGS, ("digits", "two_phase"), dict(note="my note"))
    cells = [("digits", s, e, k, 3, None) for s in (0, 1, 2)
             for e, k in (("backprop", "learner"), ("two_phase", "model"), ("cdtp", "model"))]
    answers = {}
    for c in cells:
        s = c[1]
        if c[2] == "backprop":
            answers[c] = {"metric": 0.9 + 0.01 * s, "per_example": 1.0 + s}
        elif c[2] == "two_phase":
            answers[c] = {"metric": [0.5, 0.7, 0.6][s], "per_example": 10.0 * (1.0 + s) * (s + 1)}
        else:
            answers[c] = {"error": "NumericalError: it diverged"} if s == 1 else \
                {"metric": 0.2, "per_example": 4.0}
    rows = {r["name"]: r for r in compare.rows_from(cells, answers)}
    two = rows["two_phase"]
    assert two["mean"] == pytest.approx(0.6)
    assert two["std"] == pytest.approx(np.std([0.5, 0.7, 0.6], ddof=1))
    assert two["time_vs_backprop"] == pytest.approx(np.mean([10.0, 20.0, 30.0]))
    assert two["note"] == "my note" and two["seeds"] == 3
    cdtp = rows["cdtp"]
    assert cdtp["seeds"] == 2 and "1 seed(s) failed: NumericalError" in cdtp["note"]
    assert cdtp["time_vs_backprop"] == pytest.approx(np.mean([4.0 / 1.0, 4.0 / 3.0]))
    assert rows["backprop"]["time_vs_backprop"] == pytest.approx(1.0)


def test_a_model_that_always_fails_keeps_its_row_with_the_reason(compare):
    cells = [("digits", 0, "backprop", "learner", 1, None), ("digits", 0, "mixture", "model", 1, None)]
    answers = {cells[0]: {"metric": 0.9, "per_example": 1.0},
               cells[1]: {"error": "ValueError: needs square layers"}}
    row = next(r for r in compare.rows_from(cells, answers) if r["name"] == "mixture")
    assert row["seeds"] == 0 and math.isnan(row["mean"])
    assert "needs square layers" in row["note"]


def test_markdown_and_csv_round_trip(compare, tmp_path):
    rows = [dict(data="digits", name="backprop", kind="learner", metric="accuracy", mean=0.97,
                 std=0.003, seeds=3, epochs=40, n_train="all", time_vs_backprop=1.0, note=""),
            dict(data="digits", name="mixture", kind="model", metric="accuracy",
                 mean=float("nan"), std=float("nan"), seeds=0, epochs=3, n_train=1000,
                 time_vs_backprop=float("nan"), note="ValueError: no")]
    compare.write(rows, tmp_path / "compare_digits")
    back = compare.read_rows(tmp_path / "compare_digits.csv")
    assert back[0]["mean"] == pytest.approx(0.97) and math.isnan(back[1]["mean"])
    table = (tmp_path / "compare_digits.md").read_text().splitlines()
    assert len(table) == 2 + len(rows) and "ValueError: no" in table[-1]
    assert (tmp_path / "compare_digits.png").stat().st_size > 1000


def test_model_settings_update_the_models_configuration(compare, monkeypatch):
    monkeypatch.setitem(compare.MODEL_SETTINGS, ("mnist1d", "two_phase"),
                        dict(model=dict(eta=0.3), training=dict(eta_hat=0.2)))
    model, training = compare.model_config("two_phase", "mnist1d")
    assert ("digits", "two_phase") not in compare.MODEL_SETTINGS   # the plain configuration
    base_model, base_training = compare.model_config("two_phase", "digits")
    assert model["eta"] == 0.3 and base_model["eta"] != 0.3
    assert training["eta_hat"] == 0.2
    assert {k: v for k, v in model.items() if k != "eta"} == \
        {k: v for k, v in base_model.items() if k != "eta"}
    net = compare.DATASETS["mnist1d"]["network"]
    built = compare.continuous_model(compare.model_registry()["two_phase"], "two_phase", net, 0,
                                     "mnist1d")
    assert built.eta == 0.3 and list(built.sizes) == net["sizes"]


def test_real_cells_one_that_runs_and_one_that_cannot_apply(compare):
    good = compare.run_cell("digits", 0, "backprop", "learner", 3, 600)
    assert 0.6 < good["metric"] <= 1.0 and good["per_example"] > 0 and good["n_train"] == 600
    bad = compare.run_cell("digits", 0, "tp_exact", "learner", 1, 200)
    assert bad["error"].startswith("ValueError") and "equal" in bad["error"]


def test_models_take_the_plain_quasi_static_step_and_their_settings(compare, monkeypatch):
    monkeypatch.setitem(compare.MODEL_SETTINGS, ("digits", "two_phase"),
                        dict(model=dict(eta=0.05), training=dict(eta_hat=0.3)))
    net = compare.DATASETS["digits"]["network"]
    learner = compare.make_learner("two_phase", "model", net, "cross_entropy", 0, data="digits")
    assert learner.present_kwargs["transient"] is False
    assert learner.eta_hat == 0.3 and learner.model.eta == 0.05
    reference = compare.make_learner("backprop (model budget)", "learner", net, "cross_entropy",
                                     0, data="digits")
    assert type(reference).__name__ == type(
        compare.make_learner("backprop", "learner", net, "cross_entropy", 0)).__name__


def test_report_flags_a_file_of_an_earlier_version(compare, tmp_path):
    row = dict(data="digits", name="backprop", kind="learner", metric="accuracy", mean=0.97,
               std=0.003, seeds=3, epochs=40, n_train="all", time_vs_backprop=1.0, note="")
    compare.write([row], tmp_path / "compare_digits")
    text = compare.report(tmp_path, tmp_path / "comparison.md").read_text()
    digits = text.split("## ")[1]
    assert "earlier version" not in digits and "| digits | backprop |" in digits
    assert "Not run" in text.split("## ")[2]
    csv_path = tmp_path / "compare_digits.csv"
    lines = csv_path.read_text().splitlines()
    csv_path.write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert "earlier version" in compare.report(tmp_path, tmp_path / "c.md").read_text()


def test_a_learners_rate_factor_scales_its_rates_and_is_noted(compare, monkeypatch):
    monkeypatch.setitem(compare.LR_SCALE, ("digits", "dtp_original"), 0.25)
    net = compare.DATASETS["digits"]["network"]
    scaled = compare.make_learner("dtp_original", "learner", net, "cross_entropy", 0,
                                  data="digits")
    plain = compare.make_learner("dtp_original", "learner", net, "cross_entropy", 0)
    assert scaled.lr == pytest.approx(0.25 * plain.lr)
    assert scaled.lr_inv == pytest.approx(0.25 * plain.lr_inv)
    cell = ("digits", 0, "dtp_original", "learner", 1, None)
    row = compare.rows_from([cell], {cell: {"metric": 0.9, "per_example": 1.0}})[0]
    assert row["note"] == "lr and lr_inv x0.25 (x1 diverges)"
