"""One complete training run as a library call: :func:`run_experiment`.

A run trains the configured learner (``[learner]``) and each baseline
(``training.baselines``) on the same data, from the same initial weights (each learner gets
its own model built from the same configuration and seed) and in the same mini-batch order
(the same ``training.seed``), then writes the figures. Its directory holds::

    config.toml        the resolved configuration (every default filled in)
    environment.jsonl  one line per start or resume: versions, device, command, time
    trajectory.npz, summary.json, checkpoint.pt     the configured learner
    <baseline>/        the same three files for each baseline (backprop/, ...)
    figures/*.png      learning curves, comparison, alignment, diagnostics, activity, spectrum
    experiment.json    the run's summary (what run_experiment returns), written last

Run directories are safe to use from parallel processes: a new one gets a unique name
(``<model>-<date>-<time>-<random>``) and is created atomically; a run holds an exclusive
lock on its directory while it works, so no other run writes into it. ``resume`` continues
a run wherever its directory now is.

Python use::

    from dendrite_sim import run_experiment
    summary = run_experiment("two_phase", "runs/small")          # prints nothing
    summary["learners"]["dendritic"]["final"]["test_accuracy"]
"""
from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from dendrite_sim.errors import NumericalError
from dendrite_sim.frontend.config import (ConfigError, apply_overrides, build_data,
                                          build_learner, build_model, build_schedule,
                                          build_update_rule,
                                          dumps_toml, load_config, resolve_source,
                                          unset_keys, validate_config)

__all__ = ["run_experiment", "RunDirError", "is_run_dir", "new_run_dir", "read_run_config",
           "environment", "RECORD", "ENVIRONMENT"]

RECORD = "experiment.json"
ENVIRONMENT = "environment.jsonl"
LOCK = "run.lock"
_RUN_FILES = ("summary.json", "checkpoint.pt", "environment.json", ENVIRONMENT, RECORD)


class RunDirError(ValueError):
    """A run directory cannot be used as asked (holds no run, holds one already, in use)."""


# ================================================================================================
# run directories
# ================================================================================================
def is_run_dir(path) -> bool:
    """Whether ``path`` holds a training run (its ``config.toml`` and the record of a start)."""
    path = Path(path)
    return (path / "config.toml").is_file() and any((path / f).is_file() for f in _RUN_FILES)


def new_run_dir(parent, stem: str, attempts: int = 100) -> Path:
    """Create and return a new directory ``parent/<stem>-<date>-<time>-<6 hex>``: the random
    suffix keeps runs started in the same second apart, and ``os.mkdir`` (no ``exist_ok``)
    makes the claim atomic (a collision draws a new suffix)."""
    parent = Path(parent)
    parent.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    for _ in range(attempts):
        path = parent / f"{stem}-{stamp}-{secrets.token_hex(3)}"
        try:
            os.mkdir(path)
            return path
        except FileExistsError:
            continue
    raise RunDirError(f"could not create a new run directory in {parent} after {attempts} "
                      "attempts")


def read_run_config(run_dir, overrides=()) -> dict:
    """The resolved configuration of the run in ``run_dir`` (``--set`` ``overrides``
    applied); ``RunDirError`` in one line when the directory holds no run."""
    run = Path(run_dir)
    if not run.is_dir():
        raise RunDirError(f"{run} holds no run (no such directory)")
    if not is_run_dir(run):
        raise RunDirError(f"{run} holds no run (no config.toml with a run record); start one "
                          f"with: dendrite-sim run MODEL_OR_CONFIG --out {run}")
    raw, _, _ = resolve_source(str(run))
    return validate_config(apply_overrides(raw, overrides))


@contextmanager
def _locked(run: Path):
    """Hold an exclusive lock on ``run`` (``run.lock``) for the duration; another process
    that holds it makes this a one-line ``RunDirError``."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no locking
        yield
        return
    handle = open(run / LOCK, "a+")
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RunDirError(f"{run} is in use by another run (its {LOCK} is held); wait for "
                              "it or choose another --out") from None
        yield
    finally:
        handle.close()


def _claim(out_dir, cfg: dict, resume: bool) -> Path:
    """The run directory: ``out_dir`` (created when missing), else ``output.dir``, else a new
    unique ``runs/<model>-<date>-<time>-<random>``."""
    target = out_dir if out_dir is not None else cfg["output"].get("dir")
    if target is None:
        if resume:
            raise RunDirError("--resume needs the run directory: dendrite-sim run DIR --resume")
        return new_run_dir("runs", cfg["model"]["name"])
    run = Path(target)
    if resume:
        read_run_config(run)      # one clear line when there is no run to continue
        return run
    run.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.mkdir(run)
    except FileExistsError:
        if not run.is_dir():
            raise RunDirError(f"--out {run} exists and is not a directory") from None
    return run


def _remove_temporaries(run: Path) -> None:
    """Remove what a process killed mid-write left in ``run``, its figures and its learners'
    folders (the caller holds the run's lock)."""
    from dendrite_sim.learning.files import remove_temporaries
    for folder in [run, run / "figures", *(p.parent for p in run.glob("*/summary.json"))]:
        remove_temporaries(folder)


def _check_fresh(run: Path, overwrite: bool) -> None:
    """Refuse to start a run where one exists, unless ``overwrite`` (then its files go)."""
    if not is_run_dir(run):
        return
    if not overwrite:
        raise RunDirError(f"{run} already holds a run; continue it with --resume, replace it "
                          "with --overwrite, or choose another --out")
    for child in run.iterdir():
        if child.is_dir() and (child.name == "figures" or (child / "summary.json").exists()):
            shutil.rmtree(child)
        elif child.name in ("trajectory.npz", "summary.json", "checkpoint.pt", RECORD):
            child.unlink()


# ================================================================================================
# records
# ================================================================================================
def environment(device, command=None) -> dict:
    """Versions and machine facts of one start of a run (a line of ``environment.jsonl``);
    ``command`` (default ``sys.argv``) is the command line that started it."""
    import numpy
    import torch
    from importlib.metadata import PackageNotFoundError, version

    def version_of(name):
        try:
            return version(name)
        except PackageNotFoundError:
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
        **{name: version_of(name) for name in ("torchdiffeq", "scipy", "scikit-learn",
                                               "matplotlib")},
        "device": str(dev),
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "torch_num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "pid": os.getpid(),
        "command": list(sys.argv) if command is None else list(command),
        "cwd": os.getcwd(),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if dev.type == "cuda" and torch.cuda.is_available():
        info["device_name"] = torch.cuda.get_device_name(dev)
    return info


def _append_environment(run: Path, device, action: str, command) -> None:
    """Append one JSON line (this start: ``action`` = new, resume or overwrite)."""
    line = json.dumps({"action": action, **environment(device, command)}) + "\n"
    with open(run / ENVIRONMENT, "a", encoding="utf-8") as handle:
        handle.write(line)
        handle.flush()
        os.fsync(handle.fileno())


def _write_config(run: Path, cfg: dict, origin: str) -> None:
    """``config.toml`` without ``output.dir``: the directory is where the file is."""
    from dendrite_sim.learning.files import atomic_write
    stored = {s: dict(t) for s, t in cfg.items() if s != "sweep"}
    stored["output"].pop("dir", None)
    text = dumps_toml(stored, header=f"dendrite-sim run configuration (from {origin}); keys "
                      "without a value are listed as comments", unset=unset_keys(stored))
    atomic_write(run / "config.toml", lambda f: f.write(text.encode("utf-8")), mode=0o644)


def _write_record(run: Path, summary: dict) -> None:
    from dendrite_sim.learning.files import atomic_write
    text = json.dumps(summary, indent=2, default=str, allow_nan=True).encode()
    atomic_write(run / RECORD, lambda f: f.write(text))


def read_record(path: Path):
    """The run record (``experiment.json``) at ``path`` as a dict; None where there is none
    or it is not valid JSON (a run killed while writing it)."""
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None


def _finished(run: Path, cfg: dict):
    """The stored summary when the run in ``run`` finished with this configuration's epochs
    and learners, else None."""
    record = read_record(run / RECORD)
    if record is None:
        return None
    same = (record.get("complete") and record.get("epochs") == cfg["training"]["epochs"]
            and record.get("learner") == cfg["learner"]["name"]
            and record.get("requested_baselines") == cfg["training"]["baselines"])
    return record if same else None


# ================================================================================================
# the run
# ================================================================================================
class _Reporter:
    """Progress lines (stdout) and warnings (stderr, and kept for the summary)."""

    def __init__(self, progress: bool):
        self.progress, self.warnings = bool(progress), []

    def say(self, line: str) -> None:
        if self.progress:
            print(line, flush=True)

    def warn(self, line: str) -> None:
        self.warnings.append(line)
        if self.progress:
            print(f"dendrite-sim: warning: {line}", file=sys.stderr, flush=True)


def _resolve(config, out_dir, resume: bool) -> tuple[dict, str]:
    """``(resolved config, origin)`` of a dict, a ``load_config`` source, or (None with
    ``resume``) the configuration stored in ``out_dir``."""
    if config is None:
        if not resume or out_dir is None:
            raise ValueError("config is required (a dict or a load_config source) unless "
                             "resuming: run_experiment(None, RUN_DIR, resume=True)")
        return read_run_config(out_dir), str(Path(out_dir) / "config.toml")
    if isinstance(config, dict):
        return validate_config(config), "a configuration dict"
    if isinstance(config, (str, os.PathLike)):
        return load_config(str(config)), str(config)
    raise ValueError(f"config must be a dict, a model name or a path; got "
                     f"{type(config).__name__}")


def _learners(cfg, data, reporter):
    """``[(name, learner, out subdir)]``: the configured learner first (sharing the returned
    model and schedule), then each usable baseline on its own model of the same
    configuration (same initial weights). A baseline the model cannot serve is skipped."""
    model = build_model(cfg, data)
    schedule = build_schedule(cfg, model)
    primary = cfg["learner"]["name"]
    if not model.forward_params and not _dynamic(primary):
        raise ConfigError(f"learner {primary!r} needs the model's forward map but "
                          f"{type(model).__name__} has none (forward_params is empty)")
    try:
        learners = [(primary, build_learner(cfg, model, schedule), "")]
    except (TypeError, ValueError) as err:
        raise ConfigError(f"learner ({primary}): {' '.join(str(err).split())}") from None
    skipped = {}
    for name in cfg["training"]["baselines"]:
        if name == primary:
            reason = "it is the configured learner"
        elif not model.forward_params and not _dynamic(name):
            reason = f"{type(model).__name__} has no forward map (forward_params is empty)"
        else:
            reason = None
            twin = build_model(cfg, data)
            try:
                learners.append((name, build_learner(cfg, twin, build_schedule(cfg, twin),
                                                     name), name))
            except (TypeError, ValueError) as err:
                reason = " ".join(str(err).split())
        if reason:
            skipped[name] = reason
            reporter.warn(f"baseline {name!r} skipped: {reason}")
    return model, schedule, learners, skipped


def _dynamic(name: str) -> bool:
    from dendrite_sim.learning.learners import learner_class
    return bool(getattr(learner_class(name), "dynamic", False))


def _learner_summary(sub: Path, hist, run: Path) -> dict:
    stored = json.loads((sub / "summary.json").read_text())
    return {"dir": str(sub.relative_to(run)) if sub != run else ".",
            "config": stored.get("config", {}).get("learner", {}),
            "final": hist.final(), "best_test_accuracy": stored.get("best_test_accuracy"),
            "complete": stored.get("complete", False), "timing": stored.get("timing", {}),
            "solver": stored.get("solver", {})}


def run_experiment(config, out_dir=None, *, resume=False, overwrite=False,
                   progress=False, command=None) -> dict:
    """Train the configured learner and its baselines, write the run directory, and return
    the run's summary (also written to ``experiment.json``).

    Parameters
    ----------
    config : a resolved configuration dict (or a raw one: it is validated), or anything
        :func:`~dendrite_sim.frontend.config.load_config` takes (a model name, a packaged
        configuration name, a TOML file, a run directory); with ``resume``, None reads the
        configuration stored in ``out_dir``.
    out_dir : the run directory. Default ``output.dir``, else a new unique
        ``runs/<model>-<date>-<time>-<random>`` (relative to the working directory).
    resume : continue the run in ``out_dir`` from its checkpoints (same configuration;
        ``training.epochs`` may grow). A finished run is not trained again: its stored
        summary comes back with ``status = "already complete"``.
    overwrite : replace a run already in ``out_dir``.
    progress : progress lines on stdout, progress bars and warnings on stderr. Off: the call
        prints nothing (warnings are in ``summary["warnings"]``).
    command : the command line recorded in ``environment.jsonl`` (default ``sys.argv``).

    Returns
    -------
    dict with ``run_dir``, ``status`` ("trained", "resumed" or "already complete"),
    ``complete``, ``model``, ``data``, ``learner``, ``baselines`` (trained),
    ``skipped_baselines`` ``{name: reason}``, ``learners`` ``{name: {dir, final,
    best_test_accuracy, timing, ...}}`` (the configured learner first), ``figures``,
    ``warnings``, ``elapsed_s``, ``config``.
    """
    if resume and overwrite:
        raise ValueError("--resume and --overwrite exclude each other (resume=True, "
                         "overwrite=True)")
    cfg, origin = _resolve(config, out_dir, resume)
    run = _claim(out_dir, cfg, resume)
    reporter = _Reporter(progress)
    with _locked(run):
        if resume:
            _remove_temporaries(run)
            record = _finished(run, cfg)
            if record is not None:
                record.update(status="already complete", run_dir=str(run))
                return record
        else:
            _check_fresh(run, overwrite)
        return _train_all(run, cfg, origin, resume, overwrite, reporter, command)


def _train_all(run: Path, cfg: dict, origin: str, resume: bool, overwrite: bool,
               reporter: _Reporter, command) -> dict:
    from dendrite_sim.frontend.figures import make_figures
    from dendrite_sim.learning import train
    start = time.perf_counter()
    data = build_data(cfg)
    with warnings.catch_warnings(record=True) as caught:    # e.g. mu close to 0.5
        warnings.simplefilter("always")
        model, schedule, learners, skipped = _learners(cfg, data, reporter)
    for message in dict.fromkeys(str(w.message) for w in caught):
        reporter.warn(message)
    _write_config(run, cfg, origin)
    _append_environment(run, model.device, "resume" if resume else
                        "overwrite" if overwrite else "new", command)
    tr = cfg["training"]
    common = dict(epochs=tr["epochs"], batch_size=tr["batch_size"], eval_every=tr["eval_every"],
                  seed=tr["seed"], max_eval=tr.get("max_eval"),
                  diagnostics_every=tr.get("diagnostics_every"),
                  probe_size=tr.get("probe_size"), n_eig=tr["n_eig"], progress=reporter.progress,
                  lr_decay=tr["lr_decay"], resume=resume, overwrite=overwrite)
    reporter.say(f"dendrite-sim run: {type(model).__name__} {model.sizes} on {data.name} "
                 f"({len(data.x_train)} train / {len(data.x_test)} test), {tr['epochs']} "
                 f"epoch(s), batch {tr['batch_size']}, learner {cfg['learner']['name']}"
                 + (f" ({tr['mode']})" if "mode" in cfg["learner"] else "")
                 + f"; config {origin}")
    reporter.say(f"run directory: {run}")
    histories, summaries = {}, {}

    def draw() -> list:
        if not cfg["output"]["figures"] or not histories:
            return []
        reporter.say("writing figures ...")
        return [p.name for p in make_figures(run, cfg, learners[0][1], schedule, data,
                                             histories, reporter.warn)]

    for name, learner, sub in learners:
        reporter.say(f"training {name} ..." if not sub else
                     f"training the {name} baseline (same data, initial weights and batches)")
        try:
            histories[name] = train(learner, data, out_dir=run / sub if sub else run,
                                    optimizer=build_update_rule(cfg), **common)
        except NumericalError as err:
            draw()        # the figures of what finished
            role = f"baseline {name!r}" if sub else f"learner {name!r}"
            raise NumericalError(f"{type(model).__name__}, {role}: {err}") from None
        summaries[name] = _learner_summary(run / sub if sub else run, histories[name], run)
    figures = draw()
    summary = {
        "run_dir": str(run), "status": "resumed" if resume else "trained", "complete": True,
        "model": cfg["model"]["name"], "data": data.name, "learner": cfg["learner"]["name"],
        "epochs": tr["epochs"], "requested_baselines": list(tr["baselines"]),
        "baselines": [name for name, _, sub in learners if sub],
        "skipped_baselines": skipped, "learners": summaries, "figures": figures,
        "unconverged": int(getattr(learners[0][1], "unconverged", 0)),
        "warnings": reporter.warnings, "elapsed_s": time.perf_counter() - start,
        "config": cfg,
    }
    _write_record(run, summary)
    return summary


def metric(summary: dict, name: str = "test_accuracy", learner: str | None = None) -> float:
    """A final metric of one learner of a run summary (default: the configured learner);
    NaN when absent."""
    learner = summary.get("learner") if learner is None else learner
    value = summary.get("learners", {}).get(learner, {}).get("final", {}).get(name)
    return float("nan") if value is None else float(value)
