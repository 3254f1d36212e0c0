"""Parameter sweeps: a grid or a random search over configuration keys, times seeds, each
cell one run directory made by :func:`~dendrite_sim.frontend.experiment.run_experiment`.

Cells run in parallel on Ray (``pip install -e ".[sweep]"``; a local instance on every core,
or an existing cluster by ``address``), on a local process pool (``backend="processes"``) or
one after another (``"serial"``). Each worker uses one torch thread (``OMP_NUM_THREADS=1``
and ``torch.set_num_threads(1)``): the networks are small, and the cores are shared by the
cells. A sweep directory holds::

    sweep.json               the base configuration and the cells (their overrides)
    cells/<cell>/            one run directory per cell
    results.csv, results.md  one row per cell, and the mean and spread over seeds
    metric_vs_<key>.png      the metric against each swept key (mean, std over seeds)

Sweeps are resumable: running the same sweep into the same directory again (or
``sweep(SWEEP_DIR, resume=True)``) skips finished cells and continues interrupted ones from
their checkpoints.

The ``[sweep]`` section of a configuration gives the same settings as the arguments::

    [sweep]
    seeds = [0, 1]
    grid = { "model.mu" = [0.1, 0.2], "training.eta_hat" = [0.05, 0.1] }
    # or a random search: 8 draws, each with every seed
    # random = { "model.mu" = { low = 0.05, high = 0.4, log = true },
    #            "model.transfer" = ["tanh", "leaky_relu"] }
    # samples = 8

Python use::

    from dendrite_sim.frontend.sweep import sweep
    result = sweep("two_phase", "runs/mu", grid={"model.mu": [0.1, 0.2]}, seeds=[0, 1])
    print(result.table)
"""
from __future__ import annotations

import copy
import csv
import hashlib
import io
import itertools
import json
import math
import os
import sys
import re
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from dendrite_sim.frontend.config import (ConfigError, _toml_value, apply_overrides,
                                          check_type, parse_override, resolve_source,
                                          validate_config)

__all__ = ["sweep", "SweepResult", "make_cells", "validate_sweep", "parse_grid_option",
           "parse_random_option", "BACKENDS", "SEED_KEYS"]

BACKENDS = ("ray", "processes", "serial")
#: keys a cell's seed sets (those the configuration has)
SEED_KEYS = ("model.seed", "training.seed")
SWEEP_FILE = "sweep.json"
CELLS = "cells"
METRICS = ("test_accuracy", "best_test_accuracy", "test_loss", "train_accuracy",
           "train_loss")
_SWEEP_SCHEMA = {"grid": "table", "random": "table", "samples": "int", "sample_seed": "int",
                 "seeds": "list[int]", "seed_keys": "list[str]", "metric": "str"}
_RAY_INSTALL = 'pip install -e ".[sweep]"  (or: pip install ray)'


# ================================================================================================
# the sweep specification
# ================================================================================================
def _flatten(table: dict, where: str) -> dict:
    """``{"model": {"mu": [..]}}`` or ``{"model.mu": [..]}`` -> ``{"model.mu": [..]}``."""
    out = {}
    for key, value in table.items():
        if "." not in key and isinstance(value, dict) and not _is_range(value):
            for inner, v in value.items():
                out[f"{key}.{inner}"] = v
        else:
            out[key] = value
    for key in out:
        if key.count(".") != 1 or not all(key.split(".")):
            raise ConfigError(f"{where}: keys are section.key (e.g. model.mu); got {key!r}")
    return out


def _is_range(value) -> bool:
    return isinstance(value, dict) and {"low", "high"} <= set(value) <= {"low", "high", "log"}


def validate_sweep(table) -> dict:
    """The ``[sweep]`` section checked and normalised (flat ``section.key`` axes)."""
    if not isinstance(table, dict):
        raise ConfigError("[sweep] must be a table")
    out = {}
    for key, value in table.items():
        if key not in _SWEEP_SCHEMA:
            raise ConfigError(f"unknown config key sweep.{key}; known keys of [sweep]: "
                              f"{', '.join(sorted(_SWEEP_SCHEMA))}")
        spec = _SWEEP_SCHEMA[key]
        if spec == "table":
            if not isinstance(value, dict):
                raise ConfigError(f"sweep.{key} must be a table of section.key = values")
            value = _flatten(value, f"sweep.{key}")
            for axis, values in value.items():
                _check_axis(f"sweep.{key}.{axis}", values, random=key == "random")
        else:
            check_type(f"sweep.{key}", value, spec)
        out[key] = value
    if out.get("samples") is not None and out["samples"] < 1:
        raise ConfigError(f"sweep.samples must be >= 1; got {out['samples']}")
    if "random" in out and "samples" not in out:
        raise ConfigError("sweep.random needs sweep.samples (the number of draws)")
    if min(out.get("seeds", [0]) or [0]) < 0 or out.get("seeds") == []:
        raise ConfigError(f"sweep.seeds must list integers >= 0; got {out.get('seeds')}")
    return out


def _check_axis(where: str, values, random: bool) -> None:
    if random and _is_range(values):
        low, high = values["low"], values["high"]
        if not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                   for v in (low, high)) or not low < high:
            raise ConfigError(f"{where}: low < high numbers required; got {values}")
        if values.get("log") and low <= 0:
            raise ConfigError(f"{where}: a log range needs low > 0; got {low}")
        return
    if not isinstance(values, list) or not values:
        kind = "a list of values or {low, high[, log]}" if random else "a list of values"
        raise ConfigError(f"{where} must be {kind}; got {values!r}")


def _split_top(text: str) -> list[str]:
    """Split at commas outside brackets and quotes."""
    parts, depth, quote, current = [], 0, None, []
    for ch in text:
        if quote:
            quote = None if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_grid_option(text: str) -> tuple[str, list]:
    """``"model.mu=0.1,0.2"`` -> ``("model.mu", [0.1, 0.2])`` (values read as ``--set``
    reads them: TOML literals, bare words as strings)."""
    if "=" not in text:
        raise ConfigError(f"--grid expects section.key=v1,v2; got {text!r}")
    key, _, values = text.partition("=")
    parsed = [parse_override(f"{key}={v}") for v in _split_top(values)]
    if not parsed:
        raise ConfigError(f"--grid {key.strip()}: give at least one value")
    return f"{parsed[0][0]}.{parsed[0][1]}", [p[2] for p in parsed]


def parse_random_option(text: str) -> tuple[str, object]:
    """``"model.mu=0.05:0.4"`` (uniform), ``"...=1e-3:1e-1:log"`` (log-uniform) or
    ``"model.transfer=tanh,leaky_relu"`` (a choice)."""
    key, _, values = text.partition("=")
    parts = values.split(":")
    if len(parts) in (2, 3) and "," not in values:
        try:
            low, high = (int(p) if re.fullmatch(r"-?\d+", p.strip()) else float(p)
                         for p in parts[:2])
        except ValueError:
            raise ConfigError(f"--random {key}: LO:HI must be numbers; got {values!r}") from None
        if len(parts) == 3 and parts[2].strip() != "log":
            raise ConfigError(f"--random {key}: the third field can only be 'log'; got "
                              f"{parts[2]!r}")
        spec = {"low": low, "high": high, "log": len(parts) == 3}
        section, name, _ = parse_override(f"{key}=0")
        _check_axis(f"--random {key}", spec, random=True)
        return f"{section}.{name}", spec
    return parse_grid_option(text)


# ================================================================================================
# cells
# ================================================================================================
@dataclass
class Cell:
    """One run of the sweep: its directory name and the overrides of the base config."""
    name: str
    overrides: dict
    seed: int | None = None

    def assignment(self) -> tuple:
        """The swept values less the seed (the cells that differ only in seed share it)."""
        return tuple((k, json.dumps(v)) for k, v in self.overrides.items()
                     if k not in SEED_KEYS or self.seed is None)


def _draw(spec, rng):
    if _is_range(spec):
        low, high = spec["low"], spec["high"]
        if spec.get("log"):
            value = math.exp(rng.uniform(math.log(low), math.log(high)))
        else:
            value = rng.uniform(low, high)
        if isinstance(low, int) and isinstance(high, int):
            return int(round(value))
        return float(f"{value:.6g}")
    return spec[rng.randrange(len(spec))]


def _cell_name(assignment: dict, seed) -> str:
    leaves = [k.split(".")[1] for k in assignment]
    parts = [f"{k.split('.')[1] if leaves.count(k.split('.')[1]) == 1 else k}="
             f"{json.dumps(v, separators=(',', ''))}" for k, v in assignment.items()]
    if seed is not None:
        parts.append(f"seed={seed}")
    text = re.sub(r"[^\w.=+,-]", "", "_".join(parts))[:80] or "base"
    digest = hashlib.sha1(json.dumps([assignment, seed], sort_keys=True).encode()).hexdigest()
    return f"{text}-{digest[:6]}"


def make_cells(grid=None, random=None, samples=None, seeds=None, seed_keys=SEED_KEYS,
               sample_seed=0) -> list[Cell]:
    """The cells: the grid's product (or ``samples`` seeded draws of ``random``), each once
    per seed of ``seeds`` (which sets every key of ``seed_keys``)."""
    import random as random_module
    if grid and random:
        raise ConfigError("give a grid or a random search, not both")
    if grid:
        keys = list(grid)
        points = [dict(zip(keys, values)) for values in itertools.product(*grid.values())]
    elif random:
        if not samples:
            raise ConfigError("a random search needs samples >= 1 (--samples N)")
        rng = random_module.Random(sample_seed)
        points = [{k: _draw(spec, rng) for k, spec in random.items()} for _ in range(samples)]
    else:
        points = [{}]
    cells = []
    for point in points:
        for seed in (seeds or [None]):
            overrides = dict(point)
            if seed is not None:
                overrides.update({k: seed for k in seed_keys})
            cells.append(Cell(_cell_name(point, seed), overrides, seed))
    return cells


def _cell_config(base: dict, cell: Cell) -> dict:
    items = [f"{k}={_toml_value(v)}" for k, v in cell.overrides.items()]
    try:
        return validate_config(apply_overrides(base, items))
    except ConfigError as err:
        raise ConfigError(f"sweep cell {cell.name}: {err}") from None


# ================================================================================================
# running cells
# ================================================================================================
def run_cell(config: dict, out_dir: str, resume: bool) -> dict:
    """Run one cell in this process with one torch thread; ``{"summary": ...}`` or
    ``{"error": one line}`` (a failing cell does not stop the sweep)."""
    os.environ["OMP_NUM_THREADS"] = "1"
    os.environ["MKL_NUM_THREADS"] = "1"
    import torch
    torch.set_num_threads(1)
    from dendrite_sim.frontend.experiment import run_experiment
    try:
        summary = run_experiment(config, out_dir, resume=resume)
    except Exception as err:  # reported per cell
        return {"error": f"{type(err).__name__}: {' '.join(str(err).split())}"}
    return {"summary": {k: summary[k] for k in ("status", "learner", "learners", "elapsed_s")}}


@contextmanager
def _one_thread_env():
    """``OMP_NUM_THREADS=1`` in the environment that worker processes inherit."""
    saved = {k: os.environ.get(k) for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    os.environ.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _serial(jobs, workers, address, done):
    for name, args in jobs:
        done(name, run_cell(*args))


def _start_method() -> str:
    """How pool workers start: forked from this process on Linux (they begin with torch and
    the engine imported: ~2 s saved per worker, more than a short cell), spawned where fork
    is unsafe (other platforms, or CUDA already initialised here)."""
    import torch
    if sys.platform.startswith("linux") and not torch.cuda.is_initialized():
        return "fork"
    return "spawn"


def _processes(jobs, workers, address, done):
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    context = multiprocessing.get_context(_start_method())
    with _one_thread_env(), ProcessPoolExecutor(max_workers=workers,
                                                mp_context=context) as pool:
        futures = {pool.submit(run_cell, *args): name for name, args in jobs}
        for future in as_completed(futures):
            done(futures[future], future.result())


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(f"the ray backend needs Ray: {_RAY_INSTALL}; or use --backend "
                          "processes (backend='processes')") from None
    return ray


def _ray(jobs, workers, address, done):
    ray = _import_ray()
    started = not ray.is_initialized()
    with _one_thread_env():
        if started:
            options = dict(address=address) if address else dict(num_cpus=workers)
            ray.init(include_dashboard=False, log_to_driver=False, logging_level="ERROR",
                     runtime_env={"env_vars": {"OMP_NUM_THREADS": "1",
                                               "MKL_NUM_THREADS": "1"}}, **options)
    try:
        remote = ray.remote(num_cpus=1)(run_cell)
        pending = {remote.remote(*args): name for name, args in jobs}
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            for ref in ready:
                done(pending.pop(ref), ray.get(ref))
    finally:
        if started:
            ray.shutdown()


_BACKENDS = {"ray": _ray, "processes": _processes, "serial": _serial}


# ================================================================================================
# results
# ================================================================================================
@dataclass
class SweepResult:
    """What a sweep made: ``rows`` (one per cell), the aggregated Markdown ``table``, the
    files written, and the cells that failed."""
    out_dir: Path
    metric: str
    keys: list
    rows: list = field(default_factory=list)
    table: str = ""
    files: list = field(default_factory=list)
    failed: dict = field(default_factory=dict)
    counts: dict = field(default_factory=dict)

    def report(self) -> str:
        """The lines ``dendrite-sim sweep`` prints."""
        c = self.counts
        lines = [self.table, "",
                 f"sweep {self.out_dir}: {c.get('cells', 0)} cells ({c.get('earlier', 0)} "
                 f"finished earlier, {c.get('now', 0)} run now, {len(self.failed)} failed)",
                 "files: " + ", ".join(str(p) for p in self.files)]
        for name, error in self.failed.items():
            lines.append(f"failed: {name}: {error}")
        if self.failed or c.get("now", 0) < c.get("cells", 0) - c.get("earlier", 0):
            lines.append(f"continue with: dendrite-sim sweep {self.out_dir} --resume")
        return "\n".join(lines)


def _row(cell: Cell, summary: dict, keys: list) -> dict:
    row = {"cell": cell.name, **{k: cell.overrides.get(k) for k in keys},
           "seed": cell.seed, "status": "done"}
    learners = summary["learners"]
    first = summary["learner"]
    for metric in METRICS:
        if metric == "best_test_accuracy":
            value = learners[first].get("best_test_accuracy")
        else:
            value = learners[first]["final"].get(metric)
        row[metric] = float("nan") if value is None else float(value)
    for name, entry in learners.items():
        if name != first:
            for metric in ("test_accuracy", "test_loss"):
                row[f"{name}_{metric}"] = float(entry["final"].get(metric, float("nan")))
    row["wall_time_s"] = float(learners[first].get("timing", {}).get("wall_time_s",
                                                                      float("nan")))
    return row


def _default_metric(rows) -> str:
    if any(math.isfinite(r.get("test_accuracy", float("nan"))) for r in rows):
        return "test_accuracy"
    return "test_loss"


def _fmt(value) -> str:
    if isinstance(value, float):
        return "nan" if not math.isfinite(value) else f"{value:.4g}"
    return json.dumps(value) if isinstance(value, (list, dict)) else str(value)


def _groups(rows, keys):
    """``{assignment of the swept keys: [rows of its seeds]}`` in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(tuple(json.dumps(row[k]) for k in keys), []).append(row)
    return groups


def _mean_std(values):
    values = [v for v in values if math.isfinite(v)]
    if not values:
        return float("nan"), float("nan")
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
    return mean, math.sqrt(var)


def _tables(rows, keys, metric) -> tuple[str, str]:
    """``(csv text of every cell, Markdown of the mean +- std over seeds per assignment)``."""
    columns = list(dict.fromkeys(c for row in rows for c in row))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_fmt(row.get(c, "")) for c in columns])
    others = [c for c in columns if c.endswith(f"_{metric}") and c not in METRICS]
    head = keys + ["seeds", f"{metric} (mean +- std)"] + [f"{c} (mean)" for c in others]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for assignment, members in _groups(rows, keys).items():
        mean, std = _mean_std([r[metric] for r in members])
        cells = [_fmt(json.loads(v)) for v in assignment] + [str(len(members)),
                                                              f"{_fmt(mean)} +- {_fmt(std)}"]
        cells += [_fmt(_mean_std([r.get(c, float("nan")) for r in members])[0])
                  for c in others]
        lines.append("| " + " | ".join(cells) + " |")
    return buffer.getvalue(), "\n".join(lines)


def _figures(rows, keys, metric, out: Path, grid: bool) -> list[Path]:
    """``metric_vs_<key>.png`` for each swept key: the mean over seeds with the standard
    deviation as error bars (and each seed as a dot); for a grid, the points that share the
    other keys' values are joined by a line. A positive key spanning 10x or more (rates,
    dampings) gets a log axis."""
    from matplotlib.figure import Figure
    from dendrite_sim.frontend import plots
    paths = []
    for key in keys:
        values = [r[key] for r in rows]
        numeric = all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)
        labels = list(dict.fromkeys(json.dumps(v) for v in values))

        def position(v):
            return v if numeric else labels.index(json.dumps(v))
        fig = Figure(figsize=(5.2, 3.4), layout="constrained")
        ax = fig.subplots()
        others = [k for k in keys if k != key]
        lines = _groups(rows, others) if grid else {(): rows}
        for n, (line_key, members) in enumerate(lines.items()):
            points = sorted(_groups(members, [key]).items(),
                            key=lambda item: position(json.loads(item[0][0])))
            xs = [position(json.loads(k[0])) for k, _ in points]
            stats = [_mean_std([r[metric] for r in m]) for _, m in points]
            label = ", ".join(f"{k.split('.')[1]}={json.loads(v)}"
                              for k, v in zip(others, line_key)) if grid and others else None
            color = f"C{n % 10}"
            ax.errorbar(xs, [s[0] for s in stats], yerr=[s[1] for s in stats],
                        fmt="-o" if grid else "o", color=color, ms=4, capsize=3, label=label)
            for x, (_, m) in zip(xs, points):
                ax.plot([x] * len(m), [r[metric] for r in m], ".", color=color, alpha=0.35)
        if not numeric:
            ax.set_xticks(range(len(labels)), [json.loads(v) for v in labels])
        elif min(values) > 0 and max(values) >= 10 * min(values):
            ax.set_xscale("log")
            ax.minorticks_off()
            ticks = sorted(set(values))
            ax.set_xticks(ticks, [f"{v:g}" for v in ticks])
        ax.set_xlabel(key)
        ax.set_ylabel(f"{metric} (mean, std over seeds)")
        if grid and others:
            ax.legend(fontsize="small")
        safe = re.sub(r"[^\w.-]", "_", key)
        paths.append(plots.save(fig, out / f"{metric}_vs_{safe}.png", dpi=110))
    return paths


# ================================================================================================
# the sweep
# ================================================================================================
def _base_and_spec(config, overrides, out: Path | None, resume: bool):
    """``(base config without [sweep], its [sweep] spec, origin)``; with ``resume`` and a
    sweep directory, those stored in its ``sweep.json``."""
    stored = None if out is None else out / SWEEP_FILE
    if resume:
        if stored is None or not stored.is_file():
            where = "--out or the sweep directory" if out is None else str(out)
            raise ConfigError(f"--resume: {where} holds no sweep (no {SWEEP_FILE})")
        record = json.loads(stored.read_text())
        base = validate_config(apply_overrides(record["base"], overrides))
        return base, record["spec"], str(stored)
    if isinstance(config, dict):
        raw, origin = copy.deepcopy(config), "a configuration dict"
    else:
        raw, origin, _ = resolve_source(str(config))
    base = validate_config(apply_overrides(raw, overrides))
    return base, base.pop("sweep", {}), origin


def sweep(config, out_dir=None, *, overrides=(), grid=None, random=None, samples=None,
          seeds=None, seed_keys=None, sample_seed=None, backend="ray", workers=None,
          address=None, metric=None, resume=False, progress=False) -> SweepResult:
    """Run every cell of a sweep (module docstring) and write its table and figures.

    Parameters
    ----------
    config : a configuration dict, or a model name / packaged configuration / TOML file /
        run directory; its ``[sweep]`` section supplies the settings not given here. With
        ``resume``, None: the sweep stored in ``out_dir``.
    out_dir : the sweep directory (default a new ``runs/sweep-<model>-<date>-<time>-<random>``).
        A directory holding the same sweep is continued; one holding another is refused.
    overrides : ``section.key=value`` strings applied to the base configuration.
    grid : ``{"section.key": [values]}``: the product of the values.
    random, samples, sample_seed : ``{"section.key": {"low", "high"[, "log"]} or [choices]}``
        drawn ``samples`` times with ``random.Random(sample_seed)``.
    seeds : each cell runs once per seed, which sets ``seed_keys`` (default ``model.seed``
        and ``training.seed``, those the configuration has).
    backend : "ray", "processes" or "serial"; ``workers`` parallel cells (default every
        core); ``address`` an existing Ray cluster.
    metric : the final metric of the table and figures (default test accuracy, test loss for
        regression).
    resume : continue the sweep in ``out_dir``.
    progress : a line per finished cell on stdout.
    """
    from dendrite_sim.frontend.experiment import RECORD, is_run_dir
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}; got {backend!r}")
    if workers is not None and (isinstance(workers, bool) or not isinstance(workers, int)
                                or workers < 1):
        raise ValueError(f"--workers must be an integer >= 1; got {workers!r}")
    out = None if out_dir is None else Path(out_dir)
    if resume and out is None and config is not None and Path(str(config)).is_dir():
        out = Path(str(config))
    base, spec, origin = _base_and_spec(config, overrides, out, resume)
    given = {"grid": grid, "random": random, "samples": samples, "seeds": seeds,
             "seed_keys": seed_keys, "sample_seed": sample_seed, "metric": metric}
    spec = validate_sweep({**spec, **{k: v for k, v in given.items() if v is not None}})
    if backend == "ray":
        _import_ray()          # before any work: a clear line when Ray is missing
    cells = make_cells(spec.get("grid"), spec.get("random"), spec.get("samples"),
                       spec.get("seeds"), present_keys(base, spec.get("seed_keys", SEED_KEYS)),
                       spec.get("sample_seed", 0))
    configs = {cell.name: _cell_config(base, cell) for cell in cells}
    out = _sweep_dir(out, base, spec, cells)
    swept = list(spec.get("grid") or spec.get("random") or {})
    result = SweepResult(out, spec.get("metric", ""), swept)
    rows, todo = {}, []
    for cell in cells:
        cell_dir = out / CELLS / cell.name
        record = _complete_record(cell_dir / RECORD)
        if record is not None:
            rows[cell.name] = _row(cell, record, swept)
        else:
            todo.append((cell.name, (configs[cell.name], str(cell_dir), is_run_dir(cell_dir))))
    result.counts = {"cells": len(cells), "earlier": len(rows), "now": 0}
    by_name = {cell.name: cell for cell in cells}
    clock = time.perf_counter()

    def done(name, answer):
        if "error" in answer:
            result.failed[name] = answer["error"]
            line = f"cell {name} failed: {answer['error']}"
        else:
            rows[name] = _row(by_name[name], answer["summary"], swept)
            result.counts["now"] += 1
            line = (f"cell {len(rows)}/{len(cells)} {name}: "
                    + ", ".join(f"{m} {_fmt(rows[name][m])}" for m in ("test_accuracy",
                                                                        "test_loss")))
        if progress:
            print(f"[{time.perf_counter() - clock:7.1f}s] {line}", flush=True)

    if todo:
        if progress:
            print(f"sweep {out}: {len(cells)} cells, {len(todo)} to run on {backend} "
                  f"({workers or os.cpu_count()} workers)", flush=True)
        _BACKENDS[backend](todo, workers or os.cpu_count(), address, done)
    ordered = [rows[c.name] for c in cells if c.name in rows]
    result.rows = ordered
    if ordered:
        result.metric = result.metric or _default_metric(ordered)
        _write_results(result, ordered, swept, out, grid=bool(spec.get("grid")))
    return result


def present_keys(base: dict, seed_keys) -> list:
    """The seed keys that exist in the resolved base configuration."""
    return [k for k in seed_keys if k.split(".")[1] in base.get(k.split(".")[0], {})]


def _complete_record(path: Path):
    from dendrite_sim.frontend.experiment import read_record
    record = read_record(path)
    return record if record and record.get("complete") else None


def _sweep_dir(out: Path | None, base: dict, spec: dict, cells) -> Path:
    """Create (or reopen, when it holds the same sweep) the sweep directory and write
    ``sweep.json``."""
    from dendrite_sim.frontend.experiment import new_run_dir
    from dendrite_sim.learning.files import atomic_write
    record = {"base": base, "spec": spec,
              "cells": [{"name": c.name, "overrides": c.overrides, "seed": c.seed}
                        for c in cells]}
    text = json.dumps(record, indent=2, sort_keys=True)
    if out is None:
        out = new_run_dir("runs", f"sweep-{base['model']['name']}")
    else:
        out.mkdir(parents=True, exist_ok=True)
        stored = out / SWEEP_FILE
        if stored.is_file():
            old = json.loads(stored.read_text())
            if json.dumps(old, indent=2, sort_keys=True) != text:
                raise ConfigError(f"{out} holds another sweep (its {SWEEP_FILE} differs); "
                                  "continue it with --resume, or choose another --out")
    (out / CELLS).mkdir(exist_ok=True)
    atomic_write(out / SWEEP_FILE, lambda f: f.write(text.encode()))
    return out


def _write_results(result: SweepResult, rows, keys, out: Path, grid: bool) -> None:
    from dendrite_sim.learning.files import atomic_write
    csv_text, table = _tables(rows, keys, result.metric)
    result.table = table
    atomic_write(out / "results.csv", lambda f: f.write(csv_text.encode()))
    atomic_write(out / "results.md", lambda f: f.write((table + "\n").encode()))
    result.files = [out / "results.md", out / "results.csv"]
    if keys:
        result.files += _figures(rows, keys, result.metric, out, grid)

