"""Figures: each plot function returns a Figure with the expected axes and renders to PNG
through ``save``, which writes atomically."""
import os

import numpy as np
import pytest
import torch
from matplotlib.figure import Figure

import dendrite_sim as ds
from dendrite_sim import plots
from dendrite_sim.continuation import continuation
from dendrite_sim.models import Mixture

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
F64 = torch.float64


@pytest.fixture(scope="module")
def model():
    return Mixture([4, 4, 4, 4], mu=0.2, dtype=F64, seed=1)


@pytest.fixture(scope="module")
def x():
    return torch.randn(2, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def trajectory(model, x):
    target = ds.Nudge(torch.zeros(2, 4, dtype=F64), eta_hat=0.5)
    return ds.simulate(model, x, torch.linspace(0, 5, 41, dtype=F64), target)


def assert_png(fig, path):
    assert isinstance(fig, Figure)
    out = plots.save(fig, path)
    assert out == path and path.is_file() and path.stat().st_size > 0
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    assert sorted(p.name for p in path.parent.iterdir() if p.name.endswith(".tmp")) == []


def test_module_never_uses_pyplot():
    # figures are built without pyplot: no global state, no GUI, never shown
    import inspect
    source = inspect.getsource(plots)
    assert "matplotlib.pyplot" not in source and "show(" not in source


def test_plot_activity(trajectory, tmp_path):
    fig = plots.plot_activity(trajectory, example=1)
    assert len(fig.axes) == 3                                   # one panel per layer
    assert len(fig.axes[0].lines) == 4                          # one line per unit
    assert_png(fig, tmp_path / "activity.png")


def test_plot_activity_with_phases_and_gamma(trajectory, tmp_path):
    phases = [(0.0, 2.5, "free"), (2.5, 5.0, "nudge")]
    fig = plots.plot_activity(trajectory, phases=phases, gamma=lambda t: 0.5 + 0.5 * np.cos(t))
    assert len(fig.axes) == 6                                   # 3 panels + 3 twin axes
    fig2 = plots.plot_activity(trajectory, gamma=np.ones(41))
    assert len(fig2.axes) == 6
    assert_png(fig, tmp_path / "activity_phases.png")
    with pytest.raises(ValueError, match="gamma"):
        plots.plot_activity(trajectory, gamma=np.ones(3))
    with pytest.raises(ValueError, match="example"):
        plots.plot_activity(trajectory, example=2)


def test_plot_eigenvalues(model, x, tmp_path):
    spec = ds.spectrum(model, x, ds.fixed_point(model, x))
    fig = plots.plot_eigenvalues(spec)
    assert len(fig.axes) == 1
    assert_png(fig, tmp_path / "eig.png")
    fig = plots.plot_eigenvalues(spec.eigenvalues, example=0)   # a tensor, one example
    assert len(fig.axes) == 1 and len(fig.axes[0].lines) == 3   # 2 axis lines + 1 example
    assert plots.plot_eigenvalues(spec.eigenvalues[0]).axes     # (N,) accepted
    with pytest.raises(ValueError, match="example"):
        plots.plot_eigenvalues(spec, example=5)


def test_identical_spectra_are_drawn_once_and_labelled():
    a = np.array([-1.0 + 0.5j, -1.0 - 0.5j, -2.0])
    ev = np.stack([a, a[::-1], a + 1e-12, a * 2])      # rows 0-2 coincide (any order)
    fig = plots.plot_eigenvalues(ev)
    points = [line for line in fig.axes[0].lines if line.get_marker() == "o"]
    assert [line.get_label() for line in points] == ["examples 0, 1, 2 (same spectrum)",
                                                     "example 3"]
    assert len({line.get_color() for line in points}) == 2


def test_plot_on_given_axes(model, x):
    fig = Figure()
    ax = fig.add_subplot(1, 2, 2)
    spec = ds.spectrum(model, x, ds.fixed_point(model, x))
    assert plots.plot_eigenvalues(spec, ax=ax) is fig and len(fig.axes) == 1


def test_plot_continuation(model, x, tmp_path):
    cont = continuation(model, x, "feedback_gain", [1.0, 3.0, 5.0, 5.5],
                        max_iter=10, settle_time=1.0)
    assert np.isfinite(cont.loss_of_stability.numpy()).all()
    fig = plots.plot_continuation(cont)
    assert len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_xlabel() == "feedback_gain"
    assert len(ax.collections) == 2                             # real-part scatter per example
    assert_png(fig, tmp_path / "cont.png")
    assert len(plots.plot_continuation(cont, example=0).axes) == 1


def test_plot_learning_curves(tmp_path):
    n = np.arange(0, 500, 50)
    history = {"examples": n, "train_loss": np.exp(-n / 200), "test_loss": np.exp(-n / 250),
               "train_accuracy": 1 - np.exp(-n / 200), "test_accuracy": (n[::2], n[::2] / 500),
               "learning_rate": np.full(len(n), 0.01)}
    fig = plots.plot_learning_curves(history)
    assert len(fig.axes) == 3                                   # loss, accuracy, learning_rate
    assert [len(ax.lines) for ax in fig.axes] == [2, 2, 1]
    assert fig.axes[-1].get_xlabel() == "examples"
    assert_png(fig, tmp_path / "learning.png")
    # simulated time on the x axis, chosen explicitly
    fig = plots.plot_learning_curves({"time": n * 0.1, "examples": n, "train_loss": n}, x="time")
    assert len(fig.axes) == 2                                   # train_loss and examples
    assert fig.axes[-1].get_xlabel() == "time"


def test_plot_layer_diagnostics(tmp_path):
    rng = np.random.default_rng(0)
    recon = rng.random((20, 3))
    recon[:, -1] = np.nan                      # no feedback map into the output layer
    diagnostics = {"|dW|": torch.rand(20, 3), "recon": recon, "max Re λ": -rng.random(20)}
    fig = plots.plot_layer_diagnostics(diagnostics, steps=np.arange(20) * 10)
    assert len(fig.axes) == 3
    assert [len(ax.lines) for ax in fig.axes] == [3, 2, 1]
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["layer 1", "layer 2"]
    assert fig.axes[2].get_legend() is None
    assert_png(fig, tmp_path / "diag.png")
    with pytest.raises(ValueError, match="at least one panel"):
        plots.plot_layer_diagnostics({})


def test_multi_panel_functions_accept_an_empty_figure(trajectory):
    fig = Figure()
    assert plots.plot_activity(trajectory, fig=fig) is fig and len(fig.axes) == 3
    with pytest.raises(ValueError, match="empty"):
        plots.plot_activity(trajectory, fig=fig)


def test_save_replaces_existing_file(tmp_path):
    path = tmp_path / "fig.png"
    path.write_bytes(b"old")
    fig = plots.plot_layer_diagnostics({"a": np.ones((3, 2))})
    assert_png(fig, path)
    assert os.listdir(tmp_path) == ["fig.png"]


def test_save_error_leaves_target_and_no_temp_file(tmp_path, monkeypatch):
    path = tmp_path / "fig.png"
    path.write_bytes(b"precious")
    fig = plots.plot_layer_diagnostics({"a": np.ones((3, 2))})

    def broken(handle, **kwargs):
        handle.write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(fig, "savefig", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        plots.save(fig, path)
    assert path.read_bytes() == b"precious"
    assert os.listdir(tmp_path) == ["fig.png"]
    # same for a target that does not exist yet: nothing is created
    with pytest.raises(RuntimeError):
        plots.save(fig, tmp_path / "new.png")
    assert os.listdir(tmp_path) == ["fig.png"]


def test_save_into_missing_directory_fails_cleanly(tmp_path):
    fig = plots.plot_layer_diagnostics({"a": np.ones((3, 2))})
    with pytest.raises(FileNotFoundError):
        plots.save(fig, tmp_path / "missing" / "fig.png")


def test_comparison_axes_show_the_trained_part():
    """The learners' comparison: a loss spanning more than 10x gets a log axis, one that does
    not a linear one; an accuracy whose initial values lie far below the trained ones (more
    than 3x the trained range) is zoomed to the trained part, with the initial values written
    on the panel, and left alone when they lie inside or near it (a fast start, as the main
    job's)."""
    from dendrite_sim.frontend.figures import _log_if_wide, _zoom_past_start
    fig = Figure()
    wide, narrow, zoomed, inside, near = fig.subplots(5, 1)
    _log_if_wide(wide, [np.array([1.35, 0.12, 0.09]), np.array([1.3, 0.1, np.nan])])
    _log_if_wide(narrow, [np.array([0.5, 0.2, 0.1])])
    assert wide.get_yscale() == "log" and narrow.get_yscale() == "linear"
    for ax, first in ((zoomed, 0.005), (inside, 0.85)):
        ax.plot([0, 1, 2], [first, 0.82, 0.87])
        _zoom_past_start(ax, [np.array([first, 0.82, 0.87]), np.array([first, 0.84, 0.86])])
    low, high = zoomed.get_ylim()
    assert 0.8 < low < 0.82 and 0.87 < high < 0.88
    assert "initial weights: 0.005 (off the axis)" in [t.get_text() for t in zoomed.texts]
    assert inside.get_ylim()[0] < 0.82 and not inside.texts
    near.plot([0, 1, 2], [0.1, 0.6, 0.92])
    _zoom_past_start(near, [np.array([0.1, 0.6, 0.92])])
    assert near.get_ylim()[0] < 0.1 and not near.texts
