"""``dendrite-sim``: the command-line front door (also ``python -m dendrite_sim``).

Subcommands (each has ``--help``)::

    dendrite-sim run MODEL_OR_CONFIG [--set key=value ...] [--out DIR] [--quiet]
    dendrite-sim run RUN_DIR --resume [--set training.epochs=N]   (continue a run)
    dendrite-sim sweep MODEL_OR_CONFIG --grid KEY=v1,v2 [--seeds 0,1] [--out DIR]
    dendrite-sim simulate MODEL_OR_CONFIG [--set ...] [--out DIR] [--plastic]
    dendrite-sim analyze MODEL_OR_CONFIG [--set ...] [--sweep PARAM --values a:b:n]
    dendrite-sim compare RUN_DIR [RUN_DIR ...] [--out FILE]
    dendrite-sim plot RUN_DIR
    dendrite-sim config MODEL_OR_CONFIG [--set ...]      (print the resolved configuration)
    dendrite-sim models                                   (list the registered models)

``MODEL_OR_CONFIG`` is a registered model name (its default configuration
``dendrite_sim/configs/<name>.toml``), a packaged configuration name (``fashion_two_phase``),
a TOML file, or a run directory (its ``config.toml``; ``simulate`` and ``analyze`` then also
load the trained weights from ``checkpoint.pt``).

``run`` is a thin wrapper of :func:`dendrite_sim.frontend.experiment.run_experiment` (the run
directory's files are described there); ``sweep`` of
:func:`dendrite_sim.frontend.sweep.sweep`.

Errors in the configuration, the data or the library's argument checks print one line,
``dendrite-sim: error: ...``, on stderr and exit with status 2 (set ``DENDRITE_SIM_DEBUG=1``
for the traceback).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from pathlib import Path

from dendrite_sim.learning.files import atomic_write
from dendrite_sim.frontend.config import (ConfigError, build_data, build_learner, build_model,
                                          build_schedule, dumps_toml, model_names,
                                          model_registry, resolve_source, apply_overrides,
                                          unset_keys, validate_config)
from dendrite_sim.frontend.experiment import (environment, new_run_dir, read_run_config,
                                              run_experiment)
from dendrite_sim.frontend.figures import (FIGURES, activity_figure, examples as _examples,
                                           make_figures, phases as _phases)

__all__ = ["main", "build_parser", "environment", "comparison_rows", "comparison_table"]

PROG = "dendrite-sim"


class CLIError(Exception):
    """An error reported as one line (exit status 2)."""


# ================================================================================================
# small helpers
# ================================================================================================
def _warn(message: str):
    print(f"{PROG}: warning: {message}", file=sys.stderr, flush=True)


def _atomic_text(path: Path, text: str) -> Path:
    return atomic_write(path, lambda handle: handle.write(text.encode("utf-8")), mode=0o644)


def _output_dir(out, cfg: dict, kind: str) -> Path:
    """``--out`` (created when missing), else a new unique ``runs/<model>-<kind>-...``."""
    if out is None:
        return new_run_dir("runs", f"{cfg['model']['name']}-{kind}")
    path = Path(out)
    path.mkdir(parents=True, exist_ok=True)
    return path


def _load(target: str, overrides) -> tuple[dict, str, Path | None]:
    """``(resolved config, description, run dir or None)``."""
    raw, origin, run_dir = resolve_source(target)
    return validate_config(apply_overrides(raw, overrides)), origin, run_dir


def _fmt_acc(v) -> str:
    return "n/a" if v is None or not math.isfinite(v) else f"{100 * v:.2f}%"


def _fmt(v, spec=".4g") -> str:
    return "n/a" if v is None or not math.isfinite(v) else format(v, spec)


def _load_weights(learner, run_dir: Path):
    import torch
    path = Path(run_dir) / "checkpoint.pt"
    if not path.is_file():
        raise FileNotFoundError(f"{run_dir}: no checkpoint.pt (was the run interrupted before "
                                "its first evaluation?)")
    ckpt = torch.load(path, weights_only=True, map_location=learner.device)
    learner.load_state_dict(ckpt["learner"])


def _setup(target, overrides, weights=True):
    """Config, data, model, schedule and the configured learner (weights from a run dir)."""
    cfg, origin, run_dir = _load(target, overrides)
    data = build_data(cfg)
    model = build_model(cfg, data)
    schedule = build_schedule(cfg, model)
    learner = build_learner(cfg, model, schedule)
    if weights and run_dir is not None:
        _load_weights(learner, run_dir)
    return cfg, origin, run_dir, data, model, schedule, learner


def _dynamic_learner(learner, command: str):
    if not getattr(learner, "dynamic", False):
        raise CLIError(f"{command} needs a learner with neural dynamics; this configuration's "
                       f"learner is {type(learner).__name__} (--set learner.name=dendritic)")
    return learner


# ================================================================================================
# run
# ================================================================================================
def _run_config(args) -> tuple[dict, str, str | None]:
    """``(config, origin, run directory)`` of ``run``: with ``--resume`` and no ``--out`` the
    target is the run directory (wherever it is), and its stored configuration is used."""
    if args.resume and args.out is None:
        target = Path(args.target)
        if not target.exists() and re.fullmatch(r"\w+", args.target):
            raise CLIError(f"--resume continues a run: give its directory ({PROG} run RUN_DIR "
                           f"--resume) or --out RUN_DIR; {args.target!r} is not a directory")
        return read_run_config(target, args.set), str(target / "config.toml"), str(target)
    cfg, origin, _ = _load(args.target, args.set)
    return cfg, origin, args.out


def cmd_run(args) -> int:
    if args.resume and args.overwrite:
        raise CLIError("--resume and --overwrite exclude each other")
    cfg, origin, out = _run_config(args)
    _thread_hint(args.quiet, cfg["model"].get("device", "cpu"))
    summary = run_experiment(cfg, out, resume=args.resume, overwrite=args.overwrite,
                             progress=not args.quiet, command=args.command_line)
    if args.quiet:
        for line in summary.get("warnings", []):
            _warn(line)
    print(_result_lines(summary))
    return 0


def _thread_hint(quiet, device):
    """Suggest OMP_NUM_THREADS=1: small networks run slower with several CPU threads."""
    import torch
    if quiet or "OMP_NUM_THREADS" in os.environ or torch.device(device).type != "cpu":
        return
    if torch.get_num_threads() > 1:
        print(f"hint: {torch.get_num_threads()} CPU threads; for these small networks "
              "OMP_NUM_THREADS=1 is usually several times faster", flush=True)


def _result_lines(summary: dict) -> str:
    out = Path(summary["run_dir"])
    learners = summary["learners"]
    first, *others = list(learners)
    if summary["status"] == "already complete":
        return (f"{out}: the run is already complete ({summary['epochs']} epoch(s)); nothing "
                f"to train (more epochs: --resume --set training.epochs=N)")
    final = learners[first]["final"]
    classify = math.isfinite(final.get("test_accuracy", float("nan")))
    figures = summary["figures"]
    lines = [f"done in {summary['elapsed_s']:.1f} s. " + (
        f"figures: {out / FIGURES}/ ({', '.join(figures)})" if figures else "no figures")]
    key, fmt, label = (("test_accuracy", _fmt_acc, "test accuracy") if classify
                       else ("test_loss", _fmt, "test loss"))
    line = f"{label}: {first} {fmt(final[key])}"
    for name in others:
        line += f" vs {name} {fmt(learners[name]['final'][key])}"
    lines.append(line + f" (after {final['epoch']:g} epoch(s))")
    if summary.get("unconverged"):
        lines.append(f"note: {summary['unconverged']} free equilibria did not reach the solver "
                     "tolerance")
    lines.append(f"summary: {out / 'experiment.json'}; compare runs with: {PROG} compare {out}")
    return "\n".join(lines)


# ================================================================================================
# sweep
# ================================================================================================
def cmd_sweep(args) -> int:
    from dendrite_sim.frontend.sweep import parse_grid_option, parse_random_option, sweep
    grid = dict(item for text in args.grid for item in [parse_grid_option(text)])
    space = dict(item for text in args.random for item in [parse_random_option(text)])
    seeds = _int_list(args.seeds, "--seeds") if args.seeds else None
    result = sweep(args.target, args.out, overrides=args.set, grid=grid or None,
                   random=space or None, samples=args.samples, seeds=seeds,
                   backend=args.backend, workers=args.workers, address=args.address,
                   metric=args.metric, resume=args.resume, progress=not args.quiet)
    print(result.report())
    return 0 if not result.failed else 1


def _int_list(text: str, option: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 0:
        raise CLIError(f"{option} must be a comma list of integers >= 0 (e.g. 0,1,2); got "
                       f"{text!r}")
    return values


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
    histories = {cfg["learner"]["name"]: History.from_npz(run / "trajectory.npz")}
    for name in cfg["training"]["baselines"]:
        if (run / name / "trajectory.npz").is_file():
            histories[name] = History.from_npz(run / name / "trajectory.npz")
    figures = make_figures(run, cfg, learner, schedule, data, histories, _warn)
    print(f"wrote {len(figures)} figure(s) to {run / FIGURES}/: "
          f"{', '.join(p.name for p in figures)}")
    return 0


# ================================================================================================
# simulate
# ================================================================================================
def cmd_simulate(args) -> int:
    import numpy as np
    cfg, origin, run_dir, data, model, schedule, learner = _setup(args.target, args.set)
    _dynamic_learner(learner, "simulate")
    k = cfg["output"]["example"]
    x, y = _examples(data, learner, k, 1)
    out = _output_dir(args.out, cfg, "simulate")
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
    from dendrite_sim.dynamics.continuation import check_sweep, continuation
    from dendrite_sim.dynamics.equilibrium import fixed_point
    from dendrite_sim.dynamics.spectral import spectrum
    if (args.sweep is None) != (args.values is None):
        raise CLIError("--sweep and --values go together (e.g. --sweep mu --values 0.05:0.45:9)")
    values = parse_values(args.values) if args.values else None
    cfg, origin, run_dir, data, model, schedule, learner = _setup(args.target, args.set)
    _dynamic_learner(learner, "analyze")
    if args.sweep:      # before anything is solved or written
        try:
            check_sweep(model, args.sweep, values)
        except ValueError as err:
            raise CLIError(f"--sweep {args.sweep}: {err}") from None
    n = cfg["output"]["examples"]
    x, y = _examples(data, learner, 0, n)
    out = _output_dir(args.out, cfg, "analyze")
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


def _learner_dirs(base: Path) -> list[Path]:
    """The run's configured learner (``base``) and its baselines (subdirectories with a
    ``summary.json``)."""
    subs = sorted(p.parent for p in base.glob("*/summary.json"))
    return [base] + subs


def comparison_rows(run_dirs) -> tuple[list[dict], list[str]]:
    """``(rows, skipped)``: one row per learner of each training run among ``run_dirs`` (run
    directories or their ``summary.json``); ``skipped`` lists the paths that hold no training
    run (the output of ``simulate`` or ``analyze``, a sweep, a missing path), with why."""
    rows, skipped = [], []
    for run in map(Path, run_dirs):
        summary = run if run.is_file() and run.name == "summary.json" else run / "summary.json"
        if not summary.is_file():
            why = "no such directory" if not run.exists() else "no summary.json"
            skipped.append(f"{run} ({why})")
            continue
        base = summary.parent
        cfg = {}
        if (base / "config.toml").is_file():
            try:
                cfg, _, _ = resolve_source(str(base))
            except (ConfigError, FileNotFoundError):
                cfg = {}
        for where in _learner_dirs(base):
            s = _read_summary(where / "summary.json")
            final = s.get("final", {})
            conf = s.get("config", {})
            learner = conf.get("learner", {})
            rows.append({
                "run": str(base),
                "model": cfg.get("model", {}).get("name") or learner.get("model", "?"),
                "learner": learner.get("learner", where.name)
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
    return rows, skipped


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
    rows, skipped = comparison_rows(args.run_dirs)
    if not rows:
        raise CLIError(f"no training run among the paths given: {', '.join(skipped)}")
    table = comparison_table(rows)
    print(table)
    if skipped:
        print(f"skipped {len(skipped)} path(s) holding no training run: {', '.join(skipped)}")
    if args.out:
        _atomic_text(Path(args.out), table + "\n")
        print(f"table written to {args.out}")
    return 0


# ================================================================================================
# config / models
# ================================================================================================
def cmd_config(args) -> int:
    cfg, origin, _ = _load(args.target, args.set)
    sys.stdout.write(dumps_toml(cfg, header=f"resolved configuration (from {origin})",
                                unset=unset_keys(cfg)))
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

    p = subs.add_parser("run", help="train the configured learner and its baselines; write a "
                                    "run directory with figures", formatter_class=fmt,
                        description="Train the configured network with its learner ([learner], "
                                    "default dendritic) and each baseline (training.baselines, "
                                    "default backprop: same data, initial weights and batches);"
                                    " write config.toml, environment.jsonl, trajectory.npz, "
                                    "summary.json, checkpoint.pt, one folder per baseline, "
                                    "figures/*.png and experiment.json into the run directory."
                                    "\n\nContinue an interrupted run, wherever its directory "
                                    "now is: dendrite-sim run RUN_DIR --resume")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help + " (with --resume "
                                                             "and no --out: the run to continue)")
    overrides(p)
    p.add_argument("--out", metavar="DIR", help="run directory (default: output.dir or a new "
                                                "runs/<model>-<date>-<time>-<random>)")
    p.add_argument("--quiet", action="store_true", help="no progress bar or progress messages")
    p.add_argument("--resume", action="store_true", help="continue the run in RUN_DIR (or "
                                                         "--out) from its checkpoints; a "
                                                         "finished run is not trained again")
    p.add_argument("--overwrite", action="store_true", help="replace a run already in --out")
    p.set_defaults(func=cmd_run)

    p = subs.add_parser("sweep", help="grid or random search over configuration keys and "
                                      "seeds, each cell a run directory (Ray or processes)",
                        formatter_class=fmt,
                        description="Run one training run per cell of a grid (--grid) or of a "
                                    "random search (--random, --samples), times each seed "
                                    "(--seeds), in parallel on Ray (pip install -e "
                                    "\".[sweep]\") or on local processes; write a results "
                                    "table (results.md, results.csv) and figures (the metric "
                                    "against each swept key, spread over seeds). A [sweep] "
                                    "section of the configuration gives the same settings. "
                                    "Rerunning the same command (or sweep SWEEP_DIR --resume) "
                                    "continues a killed sweep: finished cells are not rerun.",
                        epilog="Example: dendrite-sim sweep two_phase --grid model.mu=0.1,0.2 "
                               "--grid training.eta_hat=0.05,0.1 --seeds 0,1 --out runs/mu")
    p.add_argument("target", metavar="MODEL_OR_CONFIG", help=target_help + ", or a sweep "
                                                             "directory (with --resume)")
    overrides(p)
    p.add_argument("--grid", action="append", default=[], metavar="KEY=V1,V2",
                   help="a grid axis: section.key and its values (TOML literals, comma "
                        "separated; e.g. model.mu=0.1,0.2 or model.sizes=[64,32,10],[64,16,10]); "
                        "repeatable")
    p.add_argument("--random", action="append", default=[], metavar="KEY=LO:HI[:log]",
                   help="a random-search axis: uniform (or log-uniform) in [LO, HI], integers "
                        "when both are integers, or a choice KEY=A,B,C; repeatable")
    p.add_argument("--samples", type=int, metavar="N", help="random search: number of draws")
    p.add_argument("--seeds", metavar="S1,S2", help="seeds of each cell (set model.seed and "
                                                    "training.seed); default the config's")
    p.add_argument("--metric", metavar="NAME", help="final metric of the table's headline and "
                                                    "the figures (default test_accuracy, "
                                                    "test_loss for regression)")
    p.add_argument("--out", metavar="DIR", help="sweep directory (default a new "
                                                "runs/sweep-<model>-<date>-<time>-<random>)")
    p.add_argument("--backend", choices=("ray", "processes", "serial"), default="ray",
                   help="ray (default; a local instance on every core, or --address), "
                        "processes (a local process pool), serial (this process)")
    p.add_argument("--workers", type=int, metavar="N", help="parallel cells (default: every "
                                                           "core)")
    p.add_argument("--address", metavar="ADDR", help="address of an existing Ray cluster "
                                                     "(e.g. auto or ray://host:10001)")
    p.add_argument("--resume", action="store_true", help="continue the sweep in --out or "
                                                         "SWEEP_DIR")
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.set_defaults(func=cmd_sweep)

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
    p.add_argument("run_dirs", metavar="RUN_DIR", nargs="+", help="run directories (paths "
                                                                  "holding no run are listed "
                                                                  "and skipped)")
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
    args.command_line = [PROG] + list(sys.argv[1:] if argv is None else argv)
    debug = bool(os.environ.get("DENDRITE_SIM_DEBUG"))
    try:
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"\n{PROG}: interrupted", file=sys.stderr)
        return 130
    except (CLIError, ConfigError, ValueError, TypeError, FileNotFoundError, FileExistsError,
            NotADirectoryError, PermissionError, NumericalError, ImportError) as err:
        if debug:
            raise
        kind = "numerical failure: " if isinstance(err, NumericalError) else ""
        message = " ".join(str(err).split()) or type(err).__name__
        print(f"{PROG}: error: {kind}{message}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
