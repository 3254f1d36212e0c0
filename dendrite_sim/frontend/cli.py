"""``dendrite-sim``: the command-line front door (also ``python -m dendrite_sim``).

Subcommands (each has ``--help``)::

    dendrite-sim run MODEL_OR_CONFIG [--set key=value ...] [--out DIR] [--quiet]
    dendrite-sim simulate MODEL_OR_CONFIG [--set ...] [--out DIR] [--plastic]
    dendrite-sim analyze MODEL_OR_CONFIG [--set ...] [--sweep PARAM --values a:b:n]
    dendrite-sim compare RUN_DIR [RUN_DIR ...] [--out FILE]
    dendrite-sim plot RUN_DIR
    dendrite-sim config MODEL_OR_CONFIG [--set ...]      (print the resolved configuration)
    dendrite-sim models                                   (list the registered models)

``MODEL_OR_CONFIG`` is a registered model name (its default configuration
``dendrite_sim/configs/<name>.toml``), a TOML file, or a run directory (its ``config.toml``;
``simulate`` and ``analyze`` then also load the trained weights from ``checkpoint.pt``).

A run directory (``run``) holds::

    config.toml        the resolved configuration (every default filled in)
    environment.json   versions of python/torch/numpy/torchdiffeq/..., device, command line
    trajectory.npz, summary.json, checkpoint.pt     the dendritic learner (dendrite_sim.train)
    backprop/          the same three files for the backprop baseline
    figures/*.png      learning curves, alignment, diagnostics, activity, spectrum

Errors in the configuration, the data or the library's argument checks print one line,
``dendrite-sim: error: ...``, on stderr and exit with status 2 (set ``DENDRITE_SIM_DEBUG=1``
for the traceback).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

from dendrite_sim.learning.files import atomic_write
from dendrite_sim.frontend.config import (ConfigError, build_data, build_model, build_schedule, dumps_toml,
                     learner_options, model_names, model_registry, resolve_source,
                     apply_overrides, validate_config)

PROG = "dendrite-sim"
FIGURES = "figures"
BASELINE = "backprop"


class CLIError(Exception):
    """An error reported as one line (exit status 2)."""


# ================================================================================================
# small helpers
# ================================================================================================
def _say(quiet: bool, *lines):
    if not quiet:
        for line in lines:
            print(line, flush=True)


def _warn(message: str):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), mode=0o644)


def _default_dir(cfg: dict, kind: str | None = None) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    name = cfg["model"]["name"] + (f"-{kind}" if kind else "")
    return Path("runs") / f"{name}-{stamp}"


def _load(target: str, overrides) -> tuple[dict, str, Path | None]:
    """``(resolved config, description, run dir or None)``."""
    raw, origin, run_dir = resolve_source(target)
    return validate_config(apply_overrides(raw, overrides)), origin, run_dir


def _fmt_acc(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _fmt(v, spec=".4g") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def environment(device) -> dict:
    """Versions and machine facts recorded in ``environment.json``."""
    import numpy
    import torch

    def version(module):
        try:
            from importlib.metadata import version as v
            return v(module)
        except Exception:
            return None

    from dendrite_sim import __version__
    dev = torch.device(device)
    info = {
        "dendrite_sim": __version__,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "torchdiffeq": version("torchdiffeq"),
        "scipy": version("scipy"),
        "scikit-learn": version("scikit-learn"),
        "matplotlib": version("matplotlib"),
        "device": str(dev),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "command": [PROG] + sys.argv[1:],
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    return info


def _load_weights(learner, run_dir: Path):
    import torch
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (was the run interrupted before "
                                "its first evaluation?)")
    ckpt = torch.load(path, weights_only=True, map_location=learner.device)
    learner.load_state_dict(ckpt["learner"])


def _setup(target, overrides, weights=True):
    """Config, data, model, schedule and dendritic learner (weights from a run dir)."""
    from dendrite_sim.learning import DendriticLearner
    cfg, origin, run_dir = _load(target, overrides)
    data = build_data(cfg)
    model = build_model(cfg, data)
    schedule = build_schedule(cfg, model)
    tr = cfg["training"]
    present_kw, fixed_kw = learner_options(cfg)
    learner = DendriticLearner(model, schedule, mode=tr["mode"], loss=tr["loss"],
                               eta_hat=tr["eta_hat"], present_kwargs=present_kw,
                               fixed_point_kwargs=fixed_kw)
    if weights and run_dir is not None:
        _load_weights(learner, run_dir)
    return cfg, origin, run_dir, data, model, schedule, learner


def _examples(data, learner, first: int, count: int):
    """``(x, y)`` test examples ``first .. first+count-1`` (train set if there is no test)."""
    import torch
    x, y = (data.x_test, data.y_test) if len(data.x_test) else (data.x_train, data.y_train)
    if first >= len(x):
        raise ConfigError(f"output.example must be < {len(x)} (examples in the set); "
                          f"got {first}")
    y_dtype = torch.int64 if data.task == "classification" else learner.dtype
    return (torch.as_tensor(x[first:first + count], dtype=learner.dtype, device=learner.device),
            torch.as_tensor(y[first:first + count], dtype=y_dtype, device=learner.device))


# ================================================================================================
# figures
# ================================================================================================
def _phases(schedule) -> list:
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


def activity_figure(cfg, learner, schedule, x, y, path, plastic=False):
    from dendrite_sim.frontend import plots
    traj = presentation(cfg, learner, schedule, x, y, plastic)
    fig = plots.plot_activity(_Shown(traj), phases=_phases(schedule), gamma=_gamma(schedule))
    fig.suptitle(f"{type(learner.model).__name__}: one presentation of example "
                 f"{cfg['output']['example']}\n(output nudged with eta_hat = {learner.eta_hat:g} "
                 "when teaching is on; first 16 units per layer)", fontsize="medium")
    plots.save(fig, path, dpi=cfg["output"]["dpi"])
    return traj


def spectrum_figure(cfg, learner, x, path):
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


def comparison_figure(hist, bp_hist, path, dpi):
    """Loss and accuracy against examples, dendritic learner vs backprop baseline."""
    import numpy as np
    from matplotlib.figure import Figure
    from dendrite_sim.frontend import plots
    metrics = ["loss"]
    if np.isfinite(hist.test_accuracy).any():
        metrics.append("accuracy")
    fig = Figure(figsize=(6.0, 2.4 * len(metrics)), layout="constrained")
    axes = fig.subplots(len(metrics), 1, sharex=True, squeeze=False)[:, 0]
    runs = [("dendritic", hist, "C0")] + ([("backprop", bp_hist, "C3")] if bp_hist else [])
    for ax, metric in zip(axes, metrics):
        for label, h, color in runs:
            ax.plot(h.examples, getattr(h, f"test_{metric}"), "-o", ms=3, color=color,
                    label=f"{label} test")
            ax.plot(h.examples, getattr(h, f"train_{metric}"), "--", color=color, alpha=0.6,
                    label=f"{label} train")
        ax.set_ylabel(metric)
        ax.legend(fontsize="small")
    axes[-1].set_xlabel("examples")
    return plots.save(fig, path, dpi=dpi)


def make_figures(run_dir: Path, cfg, learner, schedule, data, hist, bp_hist) -> list[Path]:
    """Every figure of a run into ``run_dir/figures``; a figure that fails is reported as a
    warning and skipped."""
    from dendrite_sim.frontend.plots import plot_history
    out = Path(run_dir) / FIGURES
    out.mkdir(parents=True, exist_ok=True)
    made: list[Path] = []
    dpi = cfg["output"]["dpi"]

    def attempt(name, make):
        try:
            result = make()
        except (ValueError, RuntimeError, FileNotFoundError) as err:
            _warn(f"figure {name} skipped: {err}")
            return
        made.extend(result if isinstance(result, list) else [result])

    attempt("learning curves", lambda: plot_history(hist, out))
    attempt("comparison", lambda: comparison_figure(hist, bp_hist, out / "learning_curves_vs_"
                                                    "backprop.png", dpi))
    k = cfg["output"]["example"]
    x1, y1 = _examples(data, learner, k, 1)
    attempt("activity", lambda: (activity_figure(cfg, learner, schedule, x1, y1,
                                                 out / "activity.png"), out / "activity.png")[1])
    xs, _ = _examples(data, learner, 0, cfg["output"]["examples"])
    attempt("spectrum", lambda: (spectrum_figure(cfg, learner, xs, out / "spectrum.png"),
                                 out / "spectrum.png")[1])
    return made


# ================================================================================================
# run
# ================================================================================================
def cmd_run(args) -> int:
    from dendrite_sim.learning import BackpropLearner, train
    cfg, origin, _, data, model, schedule, learner = _setup(args.target, args.set,
                                                            weights=False)
    tr = cfg["training"]
    out = Path(args.out or cfg["output"].get("dir") or _default_dir(cfg))
    if (out / "summary.json").exists() and not (args.resume or args.overwrite):
        raise CLIError(f"{out} already holds a run; use --resume to continue it, --overwrite "
                       "to replace it, or another --out")
    out.mkdir(parents=True, exist_ok=True)
    # the baseline copies the initial weights before the dendritic learner changes them
    baseline = BackpropLearner(model, lr=tr["backprop_lr"], loss=tr["loss"]) \
        if tr["baseline"] else None
    cfg["output"]["dir"] = str(out)
    _atomic_text(out / "config.toml", dumps_toml(cfg, header=f"dendrite-sim run configuration "
                                                             f"(from {origin})"))
    _atomic_text(out / "environment.json", json.dumps(environment(model.device), indent=2))
    common = dict(epochs=tr["epochs"], batch_size=tr["batch_size"], eval_every=tr["eval_every"],
                  seed=tr["seed"], max_eval=tr.get("max_eval"),
                  diagnostics_every=tr.get("diagnostics_every"),
                  probe_size=tr.get("probe_size"), n_eig=tr["n_eig"], progress=not args.quiet,
                  resume=args.resume, overwrite=args.overwrite)
    quiet = args.quiet
    _say(quiet, f"{PROG} run: {type(model).__name__} {model.sizes} on {data.name} "
                f"({len(data.x_train)} train / {len(data.x_test)} test), {tr['epochs']} "
                f"epoch(s), batch {tr['batch_size']}, {tr['mode']} learning; config {origin}",
         f"run directory: {out}", "training the dendritic network ...")
    _thread_hint(quiet, model.device)
    start = time.perf_counter()
    hist = train(learner, data, out_dir=out, **common)
    bp_hist = None
    if baseline is not None:
        _say(quiet, "training the backprop baseline (same architecture and initial weights) ...")
        bp_hist = train(baseline, data, out_dir=out / BASELINE, **common)
    _say(quiet, "writing figures ...")
    figures = make_figures(out, cfg, learner, schedule, data, hist, bp_hist)
    elapsed = time.perf_counter() - start
    print(_result_lines(out, hist, bp_hist, figures, elapsed, learner.unconverged))
    return 0


def _thread_hint(quiet, device):
    """Suggest OMP_NUM_THREADS=1: small networks run slower with several CPU threads."""
    import torch
    if quiet or "OMP_NUM_THREADS" in os.environ or torch.device(device).type != "cpu":
        return
    if torch.get_num_threads() > 1:
        _say(False, f"hint: {torch.get_num_threads()} CPU threads; for these small networks "
                    "OMP_NUM_THREADS=1 is usually several times faster")


def _result_lines(out, hist, bp_hist, figures, elapsed, unconverged) -> str:
    final = hist.final()
    classify = math.isfinite(final["test_accuracy"])
    lines = [f"done in {elapsed:.1f} s. figures: {out / FIGURES}/ "
             f"({', '.join(p.name for p in figures) or 'none'})"]
    if classify:
        line = f"test accuracy: dendritic {_fmt_acc(final['test_accuracy'])}"
        if bp_hist is not None:
            line += f" vs backprop {_fmt_acc(bp_hist.final()['test_accuracy'])}"
    else:
        line = f"test loss: dendritic {_fmt(final['test_loss'])}"
        if bp_hist is not None:
            line += f" vs backprop {_fmt(bp_hist.final()['test_loss'])}"
    lines.append(line + f" (after {final['epoch']:g} epoch(s))")
    if unconverged:
        lines.append(f"note: {unconverged} free equilibria did not reach the solver tolerance")
    lines.append(f"summary: {out / 'summary.json'}; compare runs with: {PROG} compare {out}")
    return "\n".join(lines)


# ================================================================================================
# plot
# ================================================================================================
def cmd_plot(args) -> int:
    from dendrite_sim.learning import History
    run = Path(args.run_dir)
    if not run.is_dir():
        raise FileNotFoundError(f"run directory not found: {run}")
    for name in ("config.toml", "trajectory.npz", "checkpoint.pt"):
        if not (run / name).is_file():
            raise FileNotFoundError(f"{run}: missing {name} (not a complete run directory)")
    cfg, _, _, data, _, schedule, learner = _setup(str(run), [], weights=True)
    hist = History.from_npz(run / "trajectory.npz")
    bp_path = run / BASELINE / "trajectory.npz"
    bp_hist = History.from_npz(bp_path) if bp_path.is_file() else None
    figures = make_figures(run, cfg, learner, schedule, data, hist, bp_hist)
    print(f"wrote {len(figures)} figure(s) to {run / FIGURES}/: "
          f"{', '.join(p.name for p in figures)}")
    return 0


# ================================================================================================
# simulate
# ================================================================================================
def cmd_simulate(args) -> int:
    import numpy as np
    cfg, origin, run_dir, data, model, schedule, learner = _setup(args.target, args.set)
    k = cfg["output"]["example"]
    x, y = _examples(data, learner, k, 1)
    out = Path(args.out or _default_dir(cfg, "simulate"))
    out.mkdir(parents=True, exist_ok=True)
    path = out / "activity.png"
    traj = activity_figure(cfg, learner, schedule, x, y, path, plastic=args.plastic)
    np.savez_compressed(out / "simulation.npz", t=traj.t.cpu().numpy(),
                        y=traj.y.detach().cpu().numpy(), x=x.cpu().numpy(),
                        phase_boundaries=np.asarray(schedule.boundaries))
    weights = f"trained weights of {run_dir}" if run_dir else "initial weights"
    print(f"{type(model).__name__} {model.sizes}, {weights}; example {k} of {data.name}; "
          f"schedule {schedule!r}")
    t = traj.t
    for start, end, name in _phases(schedule):
        idx = int((t <= end + 1e-9).nonzero().max())
        out_layer = traj.layers[-1][idx, 0]
        print(f"  end of phase {name!r} (t = {float(t[idx]):g}): output "
              f"{np.array2string(out_layer.detach().cpu().numpy(), precision=3)}")
    print(f"figure: {path}\ntrajectory: {out / 'simulation.npz'}")
    return 0


# ================================================================================================
# analyze
# ================================================================================================
def parse_values(text: str):
    """``a:b:n`` (n evenly spaced values) or ``v1,v2,...``."""
    import numpy as np
    try:
        if ":" in text:
            parts = text.split(":")
            if len(parts) != 3:
                raise ValueError
            a, b, n = float(parts[0]), float(parts[1]), int(parts[2])
            if n < 2:
                raise ValueError
            return np.linspace(a, b, n)
        values = [float(v) for v in text.split(",")]
        if len(values) < 2:
            raise ValueError
        return np.asarray(values)
    except ValueError:
        raise CLIError(f"--values must be a:b:n (n >= 2 evenly spaced values) or a comma "
                       f"list of at least 2 numbers; got {text!r}") from None


def _teaching(kind, learner, y):
    if kind == "free":
        return None
    if kind == "nudge":
        return learner.teaching(y)
    return learner._target(y)  # clamp at the one-hot / regression target


def cmd_analyze(args) -> int:
    import torch
    from dendrite_sim.frontend import plots
    from dendrite_sim.dynamics.continuation import continuation
    from dendrite_sim.dynamics.equilibrium import fixed_point
    from dendrite_sim.dynamics.spectral import spectrum
    if (args.sweep is None) != (args.values is None):
        raise CLIError("--sweep and --values go together (e.g. --sweep mu --values 0.05:0.45:9)")
    values = parse_values(args.values) if args.values else None
    cfg, origin, run_dir, data, model, schedule, learner = _setup(args.target, args.set)
    n = cfg["output"]["examples"]
    x, y = _examples(data, learner, 0, n)
    out = Path(args.out or _default_dir(cfg, "analyze"))
    out.mkdir(parents=True, exist_ok=True)
    dpi = cfg["output"]["dpi"]
    target = _teaching(args.teaching, learner, y)
    weights = f"trained weights of {run_dir}" if run_dir else "initial weights"
    print(f"{type(model).__name__} {model.sizes} ({weights}); {x.shape[0]} test example(s) of "
          f"{data.name}; state size N = {model.state_size} "
          f"({', '.join(f'{v}: {sum(w)}' for v, w in model.layout.variables.items())}); "
          f"teaching: {args.teaching}")
    eq = fixed_point(model, x, target, **learner.fixed_point_kwargs)
    spec = spectrum(model, x, eq)
    print(f"equilibrium ({eq.method}{', with integration fallback' if eq.used_fallback else ''}"
          f"): converged {int(eq.converged.sum())}/{x.shape[0]}, max residual "
          f"{float(eq.residual.max()):.3g} (tol {eq.tol:.3g})")
    print(" example  residual   max Re(lambda)  stable  slowest tau  oscillatory modes")
    osc = spec.oscillatory.sum(-1)
    for b in range(x.shape[0]):
        print(f" {b:7d}  {float(eq.residual[b]):.2e}  {float(spec.max_real[b]):14.5g}  "
              f"{'yes' if bool(spec.stable[b]) else 'NO':>6}  "
              f"{float(spec.slowest_time_constant[b]):11.4g}  {int(osc[b]):17d}")
    stable = bool(spec.stable.all())
    print(f"stability: {'all equilibria locally stable' if stable else 'UNSTABLE equilibria'}"
          f" (max real part {float(spec.max_real.max()):.5g})")
    fig = plots.plot_eigenvalues(spec)
    fig.axes[0].set_title(f"spectrum at the {args.teaching} equilibrium", fontsize="medium")
    written = [plots.save(fig, out / "spectrum.png", dpi=dpi)]
    if args.sweep:
        cont = continuation(model, x, args.sweep, values, target, params=None,
                            **{k: v for k, v in learner.fixed_point_kwargs.items()
                               if k in ("tol", "max_iter", "method", "dense_limit")})
        print(cont.summary())
        fig = plots.plot_continuation(cont)
        fig.axes[0].set_title(f"{args.sweep} sweep ({args.teaching} equilibrium)",
                              fontsize="medium")
        written.append(plots.save(fig, out / f"continuation_{args.sweep}.png", dpi=dpi))
        torch.save({"values": cont.values, "max_real": cont.max_real,
                    "converged": cont.converged, "stable": cont.stable},
                   out / f"continuation_{args.sweep}.pt")
    print(f"figures: {', '.join(str(p) for p in written)}")
    return 0


# ================================================================================================
# compare
# ================================================================================================
def _read_summary(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as err:
        raise CLIError(f"{path}: not valid JSON ({err})") from None


def comparison_rows(run_dirs) -> list[dict]:
    rows = []
    for run in map(Path, run_dirs):
        summary = run if run.is_file() else run / "summary.json"
        if not summary.is_file():
            raise FileNotFoundError(f"{run}: no summary.json (not a run directory)")
        base = summary.parent
        entries = [(base, _read_summary(summary))]
        bp = base / BASELINE / "summary.json"
        if bp.is_file():
            entries.append((base / BASELINE, _read_summary(bp)))
        cfg = {}
        if (base / "config.toml").is_file():
            try:
                raw, _, _ = resolve_source(str(base))
                cfg = raw
            except (ConfigError, FileNotFoundError):
                cfg = {}
        for where, s in entries:
            final = s.get("final", {})
            conf = s.get("config", {})
            learner = conf.get("learner", {})
            rows.append({
                "run": str(base),
                "model": cfg.get("model", {}).get("name") or learner.get("model", "?"),
                "learner": learner.get("learner", "?")
                + (f" ({learner['mode']})" if learner.get("mode") else ""),
                "sizes": learner.get("sizes"),
                "data": conf.get("data", "?"),
                "epochs": final.get("epoch", float("nan")),
                "test_accuracy": final.get("test_accuracy", float("nan")),
                "best_test_accuracy": s.get("best_test_accuracy", float("nan")),
                "test_loss": final.get("test_loss", float("nan")),
                "train_accuracy": final.get("train_accuracy", float("nan")),
                "wall_time_s": s.get("timing", {}).get("wall_time_s", float("nan")),
                "complete": s.get("complete", False),
            })
    return rows


def comparison_table(rows) -> str:
    head = ["run", "model", "learner", "sizes", "data", "epochs", "test acc", "best test acc",
            "test loss", "train acc", "wall time (s)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for r in rows:
        sizes = "-".join(str(n) for n in r["sizes"]) if r["sizes"] else "?"
        cells = [r["run"] + ("" if r["complete"] else " (incomplete)"), r["model"],
                 r["learner"], sizes, r["data"], _fmt(r["epochs"], "g"),
                 _fmt_acc(r["test_accuracy"]), _fmt_acc(r["best_test_accuracy"]),
                 _fmt(r["test_loss"]), _fmt_acc(r["train_accuracy"]),
                 _fmt(r["wall_time_s"], ".1f")]
        lines.append("| " + " | ".join(str(c) for c in cells) + " |")
    return "\n".join(lines)


def cmd_compare(args) -> int:
    table = comparison_table(comparison_rows(args.run_dirs))
    print(table)
    if args.out:
        _atomic_text(Path(args.out), table + "\n")
        print(f"table written to {args.out}")
    return 0


# ================================================================================================
# config / models
# ================================================================================================
def cmd_config(args) -> int:
    cfg, origin, _ = _load(args.target, args.set)
    sys.stdout.write(dumps_toml(cfg, header=f"resolved configuration (from {origin})"))
    return 0


def cmd_models(args) -> int:
    from dendrite_sim.frontend.config import default_config_path
    reg = model_registry()
    for name in model_names():
        cls = reg[name]
        doc = (cls.__doc__ or "").strip().splitlines()
        has = "default config" if default_config_path(name) else "no default config"
        print(f"{name:12s} {cls.__name__:14s} {doc[0] if doc else ''}  [{has}]")
    return 0


# ================================================================================================
# parser
# ================================================================================================
class _Parser(argparse.ArgumentParser):
    """argparse with one-line errors: ``dendrite-sim: error: ...`` and exit status 2."""

    def error(self, message):
        sub = self.prog.split()[1:] if " " in self.prog else []
        hint = f" (see {PROG} {' '.join(sub) + ' ' if sub else ''}--help)"
        print(f"{PROG}: error: {message}{hint}", file=sys.stderr)
        raise SystemExit(2)


_TARGET_HELP = ("a model name (" + "{models}" + "), a TOML configuration file, or a run "
                "directory")


def build_parser() -> argparse.ArgumentParser:
    try:
        names = ", ".join(model_names())
    except Exception:  # pragma: no cover - the registry reports its own errors later
        names = "see `dendrite-sim models`"
    target_help = _TARGET_HELP.replace("{models}", names)
    fmt = argparse.RawDescriptionHelpFormatter
    parser = _Parser(prog=PROG, formatter_class=fmt,
                     description="Continuous-time networks of pyramidal neurons with segregated "
                                 "dendrites that learn by target propagation.",
                     epilog="Example: dendrite-sim run two_phase   (the main job: two-phase DTP "
                            "on sklearn digits vs backprop)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subs = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    subs.required = True

    def overrides(p):
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a configuration entry, section.key=value with a TOML "
                            "value (e.g. training.epochs=1, model.sizes=[64,32,10], "
                            "data.name=mnist1d); repeatable")

    p = subs.add_parser("run", help="train the dendritic network and the backprop baseline; "
                                    "write a run directory with figures", formatter_class=fmt,
                        description="Train the configured network with its learning rule and "
                                    "the backprop baseline (same architecture, initial weights "
                                    "and epochs); write config.toml, environment.json, "
                                    "trajectory.npz, summary.json, checkpoint.pt, backprop/ and "
                                    "figures/*.png into the run directory.")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help)
    overrides(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: output.dir or "
                                                "runs/<model>-<date>-<time>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its "
                                                         "checkpoints")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=cmd_run)

    p = subs.add_parser("simulate", help="integrate one input presentation over the phase "
                                         "schedule and plot the activity", formatter_class=fmt,
                        description="Integrate one test example (output.example) through the "
                                    "model's phase schedule with the output nudged toward its "
                                    "label; shade the phases; write activity.png and "
                                    "simulation.npz.")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help)
    overrides(p)
    p.add_argument("--out", metavar="DIR", help="output directory (default "
                                                "runs/<model>-simulate-<date>-<time>)")
    p.add_argument("--plastic", action="store_true", help="integrate the weights jointly with "
                                                          "the activity (coupled plasticity)")
    p.set_defaults(func=cmd_simulate)

    p = subs.add_parser("analyze", help="equilibrium, Jacobian spectrum, stability and an "
                                        "optional parameter sweep", formatter_class=fmt,
                        description="Solve the equilibrium of output.examples test examples, "
                                    "take the spectrum of the Jacobian there, report stability;"
                                    " with --sweep, track equilibrium and spectrum while a "
                                    "parameter varies (continuation).")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help)
    overrides(p)
    p.add_argument("--sweep", metavar="PARAM", help="parameter to sweep: mu, feedback_gain, or "
                                                    "another scalar hyper-parameter (tau, ...)")
    p.add_argument("--values", metavar="a:b:n", help="sweep values: a:b:n evenly spaced or a "
                                                     "comma list")
    p.add_argument("--teaching", choices=("free", "nudge", "clamp"), default="free",
                   help="output teaching at the equilibrium (default free)")
    p.add_argument("--out", metavar="DIR", help="output directory (default "
                                                "runs/<model>-analyze-<date>-<time>)")
    p.set_defaults(func=cmd_analyze)

    p = subs.add_parser("compare", help="markdown table of runs and their baselines",
                        description="Print a markdown table of the final metrics of each run "
                                    "(and of its backprop baseline) from summary.json.")
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories")
    p.add_argument("--out", metavar="FILE", help="also write the table to FILE")
    p.set_defaults(func=cmd_compare)

    p = subs.add_parser("plot", help="regenerate every figure of a saved run",
                        description="Regenerate every figure of RUN_DIR from trajectory.npz, "
                                    "summary.json and checkpoint.pt.")
    p.add_argument("run_dir", metavar="RUN_DIR")
    p.set_defaults(func=cmd_plot)

    p = subs.add_parser("config", help="print the resolved configuration",
                        description="Print the configuration with every default filled in.")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help)
    overrides(p)
    p.set_defaults(func=cmd_config)

    p = subs.add_parser("models", help="list the registered models",
                        description="List the models found in dendrite_sim.models.")
    p.set_defaults(func=cmd_models)
    return parser


def _version() -> str:
    from dendrite_sim import __version__
    return __version__


def main(argv=None) -> int:
    """Entry point of ``dendrite-sim``; returns the exit status."""
    from dendrite_sim.errors import NumericalError
    parser = build_parser()
    args = parser.parse_args(argv)
    debug = bool(os.environ.get("DENDRITE_SIM_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ConfigError, ValueError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError, NumericalError) as err:
        if debug:
            raise
        kind = "numerical failure: " if isinstance(err, NumericalError) else ""
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {kind}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
