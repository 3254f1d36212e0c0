"""Figures of simulations, spectra, continuations and learning runs (matplotlib).

Every function builds on a :class:`matplotlib.figure.Figure` created without pyplot (so no
global figure state, no GUI, safe under the Agg backend and in threads), or on the ``ax`` /
``fig`` passed in, and returns the Figure. Nothing is ever shown; write a figure with
:func:`save`, which replaces the target file atomically.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from dendrite_sim.learning.files import atomic_write
from dendrite_sim.learning.history import History

__all__ = ["plot_activity", "plot_eigenvalues", "plot_continuation", "plot_learning_curves",
           "plot_layer_diagnostics", "plot_history", "save"]

PANEL = (6.0, 2.2)  # width, height of one panel (inches)


# -- helpers ---------------------------------------------------------------------------------
def _np(a) -> np.ndarray:
    return a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)


def _axis(ax):
    """``(figure, ax)``: the given axes or a new single-panel figure."""
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=(PANEL[0], 1.8 * PANEL[1]), layout="constrained")
    return fig, fig.add_subplot()


def _panels(n: int, fig=None, sharex=True):
    """``(figure, [ax] * n)`` stacked vertically, on ``fig`` (must be empty) or a new one."""
    if n < 1:
        raise ValueError("nothing to plot: need at least one panel")
    if fig is None:
        fig = Figure(figsize=(PANEL[0], PANEL[1] * n), layout="constrained")
    elif fig.axes:
        raise ValueError("fig must be empty (it already has axes)")
    return fig, list(fig.subplots(n, 1, sharex=sharex, squeeze=False)[:, 0])


def _check_example(example: int, batch: int) -> int:
    if not isinstance(example, (int, np.integer)) or not 0 <= example < batch:
        raise ValueError(f"example must be an integer in [0, {batch - 1}]; got {example!r}")
    return int(example)


def _shade_phases(ax, phases):
    for k, (start, end, label) in enumerate(phases or ()):
        ax.axvspan(start, end, color=f"C{k % 10}", alpha=0.12, lw=0)
        ax.text(0.5 * (start + end), 1.0, label, transform=ax.get_xaxis_transform(),
                ha="center", va="bottom", fontsize="small")


def _gamma_values(gamma, t: np.ndarray) -> np.ndarray:
    values = np.array([float(gamma(s)) for s in t]) if callable(gamma) else _np(gamma)
    if values.shape != t.shape:
        raise ValueError(f"gamma must be a callable of t or an array of shape {t.shape}; got "
                         f"shape {values.shape}")
    return values


# -- activity --------------------------------------------------------------------------------
def plot_activity(trajectory, example: int = 0, phases=None, gamma=None, fig=None,
                  deviation_from=None, slow=None) -> Figure:
    """Somatic rates of one example, one panel per layer (one line per unit) against ``t``.

    ``phases``: list of ``(start, end, label)`` shaded on every panel; ``gamma``: a callable
    ``t -> value`` or an array over ``trajectory.t``, drawn on a twin axis of every panel.
    ``deviation_from``: a time ``t_ref``; adds a panel of ``||h_i(t) - h_i(t_ref)||`` per layer
    (log scale), where a nudge of the output and its descent through the layers show even
    when they are too small to see in the rates. ``slow``: ``{name: [(T, B, n_i) per layer]}``,
    the lag of a slow variable behind what it relaxes to (e.g. a trace of the free-phase
    rates); adds a panel per variable with its norm per layer (log scale).
    """
    t = _np(trajectory.t)
    layers = trajectory.layers
    example = _check_example(example, layers[0].shape[1])
    gamma_t = None if gamma is None else _gamma_values(gamma, t)
    slow = dict(slow or {})
    extra = (deviation_from is not None) + len(slow)
    fig, axes = _panels(len(layers) + extra, fig)
    for i, (ax, h) in enumerate(zip(axes, layers), start=1):
        ax.plot(t, _np(h[:, example]), lw=1)
        ax.set_ylabel(f"rate h[{i}]")
    panels = iter(axes[len(layers):])
    if deviation_from is not None:
        _deviation_panel(next(panels), t, layers, example, float(deviation_from))
    for name, values in slow.items():
        _slow_panel(next(panels), t, values, example, name)
    for ax in axes:
        _shade_phases(ax, phases)
        if gamma_t is not None:
            twin = ax.twinx()
            twin.plot(t, gamma_t, color="k", ls="--", lw=1)
            twin.set_ylabel("gamma")
    axes[-1].set_xlabel("t (τ)")
    return fig


def _deviation_panel(ax, t, layers, example, t_ref):
    ref = int(np.argmin(np.abs(t - t_ref)))
    curves = {f"layer {i}": np.linalg.norm(_np(h[:, example]) - _np(h[ref, example]), axis=-1)
              for i, h in enumerate(layers, start=1)}
    _log_curves(ax, t[ref + 1:], {k: v[ref + 1:] for k, v in curves.items()})
    ax.set_ylabel(f"change since t = {t[ref]:g}\n||h[i](t) - h[i]({t[ref]:g})||")


def _slow_panel(ax, t, lags, example, name):
    _log_curves(ax, t, {f"layer {i}": np.linalg.norm(_np(lag[:, example]), axis=-1)
                        for i, lag in enumerate(lags, start=1)})
    ax.set_ylabel(f"{name} lag: ||{name}[i] -\nwhat it tracks||")


def _log_curves(ax, t, curves: dict):
    """Non-negative curves on a log scale whose floor is 1e-8 of their largest value (exact
    zeros and round-off are not drawn as decades of signal)."""
    top = max((float(np.nanmax(c)) for c in curves.values() if c.size), default=0.0)
    floor = 1e-8 * top if top > 0 else 1e-300
    for label, c in curves.items():
        ax.plot(t, np.maximum(c, floor), lw=1.2, label=label)
    ax.set_yscale("log")
    ax.set_ylim(bottom=floor)
    ax.legend(fontsize="small", ncol=min(len(curves), 4))


# -- spectra ---------------------------------------------------------------------------------
def plot_eigenvalues(spectrum, example=None, ax=None) -> Figure:
    """Eigenvalues in the complex plane (imaginary axis marked); ``spectrum`` is a
    :class:`~dendrite_sim.Spectrum` or a complex tensor ``(B, N)`` / ``(N,)``; ``example``
    selects one row (default: all)."""
    ev = _np(getattr(spectrum, "eigenvalues", spectrum))
    ev = ev.reshape(1, -1) if ev.ndim == 1 else ev
    if example is not None:
        ev = ev[_check_example(example, ev.shape[0])][None]
    fig, ax = _axis(ax)
    ax.axvline(0.0, color="k", lw=1)
    ax.axhline(0.0, color="0.7", lw=0.5)
    numbers = list(range(len(ev))) if example is None else [example]
    for color, group in enumerate(_same_spectra(ev)):
        names = ", ".join(str(numbers[b]) for b in group)
        label = f"example {names}" if len(group) == 1 else f"examples {names} (same spectrum)"
        row = ev[group[0]]
        ax.plot(row.real, row.imag, "o", ms=4, alpha=0.7, color=f"C{color % 10}", label=label)
    ax.set_xlabel("Re λ (1/τ)")
    ax.set_ylabel("Im λ (1/τ)")
    if len(ev) <= 10:
        ax.legend(fontsize="small")
    return fig


def _same_spectra(ev: np.ndarray, rtol: float = 1e-6) -> list[list[int]]:
    """Rows of ``ev`` grouped where their eigenvalues coincide (sorted, within ``rtol`` of
    the spectrum's scale), so that identical spectra are drawn once, not hidden under each
    other."""
    keys = [np.sort_complex(np.nan_to_num(row)) for row in ev]
    scale = max(float(np.abs(np.nan_to_num(ev)).max(initial=0.0)), 1e-300)
    groups: list[list[int]] = []
    for b, key in enumerate(keys):
        for group in groups:
            if np.abs(keys[group[0]] - key).max(initial=0.0) <= rtol * scale:
                group.append(b)
                break
        else:
            groups.append([b])
    return groups


def plot_continuation(cont, example=None, ax=None) -> Figure:
    """Max real part against the swept parameter, all real parts as a light scatter, the 0
    line, points where ``fixed_point`` did not converge (open circles) and the loss of
    stability (vertical dotted line)."""
    v = _np(cont.values)
    rows = list(range(cont.max_real.shape[1])) if example is None else \
        [_check_example(example, cont.max_real.shape[1])]
    fig, ax = _axis(ax)
    ax.axhline(0.0, color="k", lw=1)
    loss = _np(cont.loss_of_stability)
    flagged = False
    for b in rows:
        color = f"C{b % 10}"
        real = _np(cont.eigenvalues[:, b].real)
        ax.scatter(np.repeat(v, real.shape[1]), real.ravel(), s=6, color=color, alpha=0.15)
        top, bad = _np(cont.max_real[:, b]), ~_np(cont.converged[:, b])
        ax.plot(v, top, "-o", ms=3, color=color, label=f"example {b}")
        ax.plot(v[bad], top[bad], "o", ms=8, mfc="none", color="r",
                label=None if not bad.any() or flagged else "not converged")
        flagged = flagged or bool(bad.any())
        if np.isfinite(loss[b]):
            ax.axvline(loss[b], color=color, ls=":", lw=1)
    ax.set_xlabel(cont.parameter)
    ax.set_ylabel("Re λ  (max: line)")
    if len(rows) <= 10:
        ax.legend(fontsize="small")
    return fig


# -- learning --------------------------------------------------------------------------------
X_KEYS = ("examples", "time", "t", "step", "steps", "epoch")
SPLITS = ("train", "test", "val", "valid", "validation")


def _series(name, value, x_default):
    """``(x, y)`` of a history entry: an array (against the x key) or an ``(x, y)`` pair."""
    if isinstance(value, tuple) and len(value) == 2:
        return _np(value[0]), _np(value[1])
    y = _np(value)
    x = x_default if x_default is not None and len(x_default) == len(y) else np.arange(len(y))
    return x, y


def plot_learning_curves(history: dict, x=None, fig=None) -> Figure:
    """Learning curves, one panel per metric, one line per split.

    Keys ``"<split>_<metric>"`` with split one of ``train``, ``test``, ``val``, ``valid``,
    ``validation`` (e.g. ``train_loss``, ``test_accuracy``) are grouped by metric; other keys
    are their own metric. Values are arrays plotted against ``history[x]`` (default
    the first of ``examples``, ``time``, ``t``, ``step``, ``steps``, ``epoch`` present, else the
    index) or ``(x, y)`` pairs.
    """
    x = x if x is not None else next((k for k in X_KEYS if k in history), None)
    x_values = None if x is None else _np(history[x])
    groups: dict[str, list[tuple[str, str]]] = {}
    for key in history:
        if key == x:
            continue
        split, _, metric = key.partition("_")
        metric, label = (metric, split) if split in SPLITS and metric else (key, key)
        groups.setdefault(metric, []).append((key, label))
    fig, axes = _panels(len(groups), fig)
    for ax, (metric, entries) in zip(axes, groups.items()):
        for key, label in entries:
            ax.plot(*_series(key, history[key], x_values), label=label)
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel(x or "index")
    return fig


#: axis labels of the learning diagnostics (``dendrite_sim.learning.diagnostics``)
DIAGNOSTIC_LABELS = {
    "cos_bp": "cosine with\nbackprop",
    "cos_gn": "cosine with\nGauss-Newton",
    "dW_norm": "trial update\n||Delta theta_i||",
    "step_dW_norm": "training step\n||Delta theta_i||",
    "recon_error": "reconstruction error\n||g_i(f_i+1(h_i)) - h_i||",
    "q_distance": "feedback distance\n||Q_i - W_i+1^+|| / ||W_i+1^+||",
    "useful_signal": "learning signal\n||d^nudged_i - d^free_i||",
    "recon_deviation": "deviation at the free\nequilibrium ||d^free_i||",
    "max_real_eig": "largest Re(eigenvalue)\nof the activity (1/tau)",
}
#: values this small are round-off (e.g. the reconstruction error of exact inverses)
ROUND_OFF = 1e-9


def plot_layer_diagnostics(diagnostics: dict, steps=None, fig=None) -> Figure:
    """One panel per diagnostic: a ``(steps, L)`` array gets one line per layer (layers with
    no finite value are left out), a ``(steps,)`` array one unlabelled line. Labels in words
    (:data:`DIAGNOSTIC_LABELS`); a positive quantity that spans more than two decades is drawn
    on a log scale; a panel whose values are all round-off says so instead of drawing it."""
    fig, axes = _panels(len(diagnostics), fig)
    for ax, (name, values) in zip(axes, diagnostics.items()):
        values = _np(values)
        s = np.arange(len(values)) if steps is None else _np(steps)
        ax.set_ylabel(DIAGNOSTIC_LABELS.get(name, name), fontsize="small")
        lines = {None: values} if values.ndim == 1 else \
            {layer: values[:, layer] for layer in range(values.shape[1])}
        drawn, round_off = [], []
        for layer, v in lines.items():
            finite = v[np.isfinite(v)]
            if not finite.size:
                continue
            if np.abs(finite).max() < ROUND_OFF:
                round_off.append("all" if layer is None else f"layer {layer + 1}")
                continue
            ax.plot(s, v, label=None if layer is None else f"layer {layer + 1}")
            drawn.append(finite)
        if round_off:
            ax.text(0.99, 0.03, f"{', '.join(round_off)}: round-off only (< {ROUND_OFF:g})",
                    ha="right", va="bottom", transform=ax.transAxes, fontsize="x-small")
        if values.ndim > 1 and drawn:
            ax.legend(fontsize="small")
        finite = np.concatenate(drawn) if drawn else np.zeros(0)
        if finite.size and finite.min() > 0 and finite.max() > 100 * finite.min():
            ax.set_yscale("log")
        else:
            ax.ticklabel_format(axis="y", useOffset=False)
    axes[-1].set_xlabel("step")
    return fig


# -- output ----------------------------------------------------------------------------------
def save(fig: Figure, path, **savefig_kwargs) -> Path:
    """Write ``fig`` to ``path`` atomically: render into a temporary file in the same
    directory, then ``os.replace`` it onto ``path``. On any error the temporary file is
    removed and an existing ``path`` is left untouched. The format follows the suffix
    (default PNG). Returns the path."""
    path = Path(path)
    fmt = savefig_kwargs.pop("format", path.suffix.lstrip(".").lower() or "png")
    return atomic_write(path, lambda handle: fig.savefig(handle, format=fmt, **savefig_kwargs))


def plot_history(history: History, out_dir) -> list[Path]:
    """Write ``learning_curves.png`` (loss/accuracy against examples),
    ``learning_curves_time.png`` (against simulated time, when it advances),
    ``alignment.png`` (per-layer ``cos_bp``, ``cos_gn``, weight-change norms) and
    ``diagnostics.png`` (reconstruction, Q distance, signal sizes, max real eigenvalue)
    into ``out_dir``; diagnostics that are NaN throughout are left out. Returns the paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    curves = history.learning_curves()
    if len(history.examples):
        fig = plot_learning_curves(curves)
        fig.suptitle(f"{_run_title(history)}: learning curves", fontsize="small")
        paths.append(save(fig, out / "learning_curves.png"))
        if np.ptp(history.sim_time) > 0:
            timed = {"time": history.sim_time,
                     **{k: v for k, v in curves.items() if k != "examples"}}
            fig = plot_learning_curves(timed, x="time")
            fig.axes[-1].set_xlabel("simulated time (τ)")
            fig.suptitle(f"{_run_title(history)}: against simulated time (units of tau)",
                         fontsize="small")
            paths.append(save(fig, out / "learning_curves_time.png"))
    alignment = ("cos_bp", "cos_gn", "dW_norm", "step_dW_norm")
    groups = {"alignment.png": (alignment, "alignment with backprop and Gauss-Newton, and "
                                           "update sizes"),
              "diagnostics.png": (tuple(k for k in history.diagnostics if k not in alignment),
                                  "the network's own diagnostics")}
    if len(history.diag_examples):
        for name, (keys, what) in groups.items():
            panels = {k: history.diagnostics[k] for k in keys
                      if k in history.diagnostics and np.isfinite(history.diagnostics[k]).any()}
            if panels:
                fig = plot_layer_diagnostics(panels, steps=history.diag_examples)
                fig.axes[-1].set_xlabel("training examples seen")
                fig.suptitle(f"{_run_title(history)}\n{what}", fontsize="small")
                paths.append(save(fig, out / name))
    return paths


def _run_title(history) -> str:
    """``"<model> [sizes], <learner> learner (<mode>)"`` from a run's configuration."""
    learner = history.config.get("learner", {})
    sizes = "-".join(str(n) for n in learner.get("sizes") or [])
    mode = f", {learner['mode'].replace('_', '-')}" if learner.get("mode") else ""
    return f"{learner.get('model', 'network')} {sizes}, {learner.get('learner', '?')} " \
           f"learner{mode}"
