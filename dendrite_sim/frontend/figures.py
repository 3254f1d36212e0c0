"""The figures of a run directory (``figures/*.png``): learning curves against the baselines,
per-layer alignment and diagnostics, the activity during one presentation with its phases
shaded, and the spectrum at the free equilibrium."""
from __future__ import annotations

from pathlib import Path

from dendrite_sim.frontend.config import ConfigError

FIGURES = "figures"
#: colours of the learners in the comparison figure: the configured one, then the baselines
_COLOURS = ("C0", "C3", "C2", "C1", "C4", "C5")


def examples(data, learner, first: int, count: int):
    """``(x, y)`` test examples ``first .. first+count-1`` (train set if there is no test)."""
    import torch
    x, y = (data.x_test, data.y_test) if len(data.x_test) else (data.x_train, data.y_train)
    if first >= len(x):
        raise ConfigError(f"output.example must be < {len(x)} (examples in the set); "
                          f"got {first}")
    y_dtype = torch.int64 if data.task == "classification" else learner.dtype
    return (torch.as_tensor(x[first:first + count], dtype=learner.dtype, device=learner.device),
            torch.as_tensor(y[first:first + count], dtype=y_dtype, device=learner.device))


def phases(schedule) -> list:
    """``[(start, end, name)]`` of the schedule's phases."""
    b = schedule.boundaries
    return [(b[k], b[k + 1], p.name) for k, p in enumerate(schedule.phases)]


def _gamma(schedule):
    """``t -> gamma(t)`` when the schedule drives a ``gamma`` gate (CDTP), else None."""
    if any("gamma" in schedule.gates(b) for b in schedule.boundaries[:-1]):
        return lambda t: schedule.gates(t).get("gamma", 1.0)
    return None


class _Shown:
    """A view of a trajectory for plot_activity with at most ``units`` lines per layer."""

    def __init__(self, traj, units=16):
        self.t = traj.t
        self.layers = [h[..., :units] for h in traj.layers]


def presentation(cfg, learner, schedule, x, y, plastic=False):
    """Integrate one presentation of ``(x, y)`` over the schedule at the learner's weights."""
    import torch
    from dendrite_sim.dynamics.integrate import simulate
    s = cfg["solver"]
    t = torch.linspace(0.0, schedule.duration, cfg["output"]["points"], dtype=learner.dtype,
                       device=learner.device)
    t = torch.unique(torch.cat([t, torch.tensor(schedule.breakpoints, dtype=learner.dtype,
                                                device=learner.device)]))
    kwargs = {k: s[k] for k in ("method", "rtol", "atol", "step_size", "max_abs")
              if s.get(k) is not None}
    return simulate(learner.model, x, t, learner.teaching(y), gates=schedule.gates,
                    breakpoints=schedule.breakpoints, plastic=plastic, **kwargs)


def slow_lags(model, traj, drive) -> dict:
    """``{variable: [(T, B, n_i) per layer]}``: for each slow variable the model declares a
    relaxation for (``dv/dt = -k (v - target)``), ``target - v`` along ``traj`` (empty when
    it declares none)."""
    import torch
    gaps = {}
    for k, t in enumerate(traj.t):
        relaxation = model.slow_relaxation(t, traj.y[k], drive)
        if not relaxation:
            return {}
        parts = model.layout.unpack(traj.y[k])
        for name, (_, target) in relaxation.items():
            gaps.setdefault(name, []).append(target - torch.cat(parts[name], dim=-1))
    return {name: list(torch.stack(g).split(model.layout.variables[name], dim=-1))
            for name, g in gaps.items()}


def activity_figure(cfg, learner, schedule, x, y, path, plastic=False):
    """``activity.png``: one presentation of ``(x, y)``, phases shaded; returns the
    trajectory."""
    from dendrite_sim.frontend import plots
    traj = presentation(cfg, learner, schedule, x, y, plastic)
    model = learner.model
    lags = slow_lags(model, traj, model.drive(x, learner.teaching(y), schedule.gates))
    fig = plots.plot_activity(_Shown(traj), phases=phases(schedule), gamma=_gamma(schedule),
                              deviation_from=schedule.boundaries[1], slow=lags)
    fig.suptitle(f"{type(model).__name__}: one presentation of example "
                 f"{cfg['output']['example']}\n(output nudged with eta_hat = {learner.eta_hat:g} "
                 "when teaching is on; first 16 units per layer)", fontsize="medium")
    plots.save(fig, path, dpi=cfg["output"]["dpi"])
    return traj


def spectrum_figure(cfg, learner, x, path):
    """``spectrum.png``: eigenvalues of the Jacobian at the free equilibrium of ``x``."""
    from dendrite_sim.frontend import plots
    from dendrite_sim.dynamics.equilibrium import fixed_point
    from dendrite_sim.dynamics.spectral import spectrum
    eq = fixed_point(learner.model, x, None, **learner.fixed_point_kwargs)
    spec = spectrum(learner.model, x, eq)
    fig = plots.plot_eigenvalues(spec)
    fig.axes[0].set_title(f"spectrum at the free equilibrium: max Re = "
                          f"{float(spec.max_real.max()):.4g}", fontsize="medium")
    plots.save(fig, path, dpi=cfg["output"]["dpi"])
    return eq, spec


def comparison_figure(histories: dict, path, dpi):
    """Test and train loss (and accuracy) against examples of each learner:
    ``histories`` is ``{label: History}``, the configured learner first. The loss is on a log
    axis when it spans more than 10x; the accuracy axis shows the trained part (the
    evaluations after the initial weights), the initial values written below it."""
    import numpy as np
    from matplotlib.figure import Figure
    from dendrite_sim.frontend import plots
    metrics = ["loss"]
    if any(np.isfinite(h.test_accuracy).any() for h in histories.values()):
        metrics.append("accuracy")
    fig = Figure(figsize=(6.0, 2.6 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    for ax, metric in zip(axes, metrics):
        series = []
        for (label, h), color in zip(histories.items(), _COLOURS * 4):
            for split, style in (("test", dict(ls="-", marker="o", ms=3)),
                                 ("train", dict(ls="--", alpha=0.6))):
                values = np.asarray(getattr(h, f"{split}_{metric}"), dtype=float)
                ax.plot(h.examples, values, color=color, label=f"{label} {split}", **style)
                series.append(values)
        ax.set_ylabel(metric)
        (_log_if_wide if metric == "loss" else _zoom_past_start)(ax, series)
        ax.legend(fontsize="small", loc="upper right" if metric == "loss" else "lower right")
    axes[-1].set_xlabel("training examples seen")
    return plots.save(fig, path, dpi=dpi)


def _log_if_wide(ax, series, ratio=10.0):
    """A log y axis where the positive values span more than ``ratio``."""
    import numpy as np
    values = np.concatenate(series)
    values = values[np.isfinite(values)]
    if values.size and values.min() > 0 and values.max() > ratio * values.min():
        ax.set_yscale("log")


def _zoom_past_start(ax, series, gap=3.0):
    """Limit the y axis to the values after each series' first (the initial weights) when
    the first ones lie outside that range by more than ``gap`` times its width (the trained
    part would be squeezed into a strip), and say what they were."""
    import numpy as np
    later = np.concatenate([s[1:] for s in series if len(s) > 1])
    later = later[np.isfinite(later)]
    first = np.array([s[0] for s in series if len(s)])
    first = first[np.isfinite(first)]
    if not later.size or not first.size:
        return
    low, high = later.min(), later.max()
    outside = max(low - first.min(), first.max() - high, 0.0)
    if outside <= gap * (high - low):
        return
    pad = 0.08 * max(high - low, 1e-3)
    ax.set_ylim(low - pad, high + pad)
    ax.text(0.01, 0.97, f"initial weights: {first.min():.3g} to {first.max():.3g} (off the "
            "axis)" if first.min() != first.max() else
            f"initial weights: {first.min():.3g} (off the axis)", ha="left", va="top",
            transform=ax.transAxes, fontsize="x-small")


def make_figures(run_dir, cfg, learner, schedule, data, histories: dict, warn) -> list[Path]:
    """Every figure of a run into ``run_dir/figures``; ``histories`` is ``{label: History}``
    with the configured learner first. A figure that fails is passed to ``warn`` (one line)
    and skipped; the activity and spectrum figures need a learner with neural dynamics."""
    from dendrite_sim.frontend.plots import plot_history
    out = Path(run_dir) / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    dpi = cfg["output"]["dpi"]

    def attempt(name, make):
        try:
            result = make()
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            warn(f"figure {name} skipped: {' '.join(str(err).split())}")
            return
        made.extend(result if isinstance(result, list) else [result])

    first = next(iter(histories.values()))
    attempt("learning curves", lambda: plot_history(first, out))
    if len(histories) > 1:
        others = "_".join(list(histories)[1:])
        attempt("comparison", lambda: comparison_figure(
            histories, out / f"learning_curves_vs_{others}.png", dpi))
    if not getattr(learner, "dynamic", False):
        return made
    k = cfg["output"]["example"]
    x1, y1 = examples(data, learner, k, 1)
    attempt("activity", lambda: (activity_figure(cfg, learner, schedule, x1, y1,
                                                 out / "activity.png"), out / "activity.png")[1])
    xs, _ = examples(data, learner, 0, cfg["output"]["examples"])
    attempt("spectrum", lambda: (spectrum_figure(cfg, learner, xs, out / "spectrum.png"),
                                 out / "spectrum.png")[1])
    return made
