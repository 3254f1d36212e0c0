"""dendrite-sim sweep: cells of a grid / random search times seeds, each a run directory;
results table and figures; a killed sweep continues without rerunning finished cells;
one torch thread per worker; Ray when installed."""
import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from dendrite_sim.cli import main
from dendrite_sim.frontend.config import ConfigError, load_config
from dendrite_sim.frontend.sweep import (make_cells, parse_grid_option, parse_random_option,
                                         sweep, validate_sweep)

PNG = b"\x89PNG\r\n\x1a\n"
# cells of well under a second: the backprop learner alone on the digits, one epoch
BASE = ["learner.name=backprop", "training.baseline=false", "output.figures=false",
        "model.sizes=[64,16,10]", "training.epochs=1", "training.n_eig=0", "data.max_test=100"]
GRID = {"learner.lr": [0.1, 0.3], "training.batch_size": [16, 32]}
SWEEP_TOML = """
[model]
name = "two_phase"
sizes = [64, 16, 10]

[learner]
name = "backprop"

[training]
epochs = 1
baseline = false
n_eig = 0

[data]
max_test = 100

[output]
figures = false

[sweep]
seeds = [0, 1]
grid = { "learner.lr" = [0.1, 0.3], "training.batch_size" = [16, 32] }
"""


def cell_dirs(out: Path) -> list[Path]:
    return sorted(p for p in (out / "cells").iterdir() if p.is_dir())


def finished(out: Path) -> list[Path]:
    return [p for p in cell_dirs(out) if (p / "experiment.json").is_file()]


def cli():
    return [sys.executable, "-m", "dendrite_sim"]


def test_grid_of_two_keys_two_values_two_seeds_makes_8_runs_a_table_and_figures(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text(SWEEP_TOML)
    result = sweep(str(config), tmp_path / "sw", backend="serial")
    cells = cell_dirs(tmp_path / "sw")
    assert len(cells) == 8 and len(finished(tmp_path / "sw")) == 8 and not result.failed
    seen = set()
    for cell in cells:
        cfg = load_config(str(cell))
        assert cfg["model"]["seed"] == cfg["training"]["seed"]     # the cell's seed
        seen.add((cfg["learner"]["lr"], cfg["training"]["batch_size"], cfg["training"]["seed"]))
    assert seen == {(lr, b, s) for lr in (0.1, 0.3) for b in (16, 32) for s in (0, 1)}
    with open(tmp_path / "sw" / "results.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 8
    by_cell = {}
    for row in rows:     # the table holds each run's final test accuracy
        with np.load(tmp_path / "sw" / "cells" / row["cell"] / "trajectory.npz") as z:
            assert float(row["test_accuracy"]) == pytest.approx(z["test_accuracy"][-1],
                                                                rel=1e-3)
        by_cell[(row["learner.lr"], row["training.batch_size"])] = \
            by_cell.get((row["learner.lr"], row["training.batch_size"]), []) + \
            [float(row["test_accuracy"])]
    table = (tmp_path / "sw" / "results.md").read_text().splitlines()
    assert len(table) == 2 + 4 and "test_accuracy (mean +- std)" in table[0]
    for line in table[2:]:
        lr, batch, n, stat = [c.strip() for c in line.strip("|").split("|")][:4]
        values = by_cell[(lr, batch)]
        mean, std = stat.split(" +- ")
        assert n == "2" and float(mean) == pytest.approx(np.mean(values), rel=1e-3)
        assert float(std) == pytest.approx(np.std(values, ddof=1), rel=1e-3, abs=1e-9)
    for key in ("learner.lr", "training.batch_size"):
        figure = tmp_path / "sw" / f"test_accuracy_vs_{key}.png"
        assert figure.read_bytes()[:8] == PNG
    # the same sweep again: nothing is rerun
    again = sweep(str(config), tmp_path / "sw", backend="serial")
    assert again.counts == {"cells": 8, "earlier": 8, "now": 0}


def test_killed_sweep_continues_without_rerunning_finished_cells(tmp_path):
    out = tmp_path / "sw"
    command = cli() + ["sweep", "two_phase", *sum((["--set", s] for s in BASE), []),
                       "--grid", "learner.lr=0.1,0.3", "--grid", "training.batch_size=16,32",
                       "--seeds", "0,1", "--backend", "serial", "--out", str(out), "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", MPLBACKEND="Agg")
    proc = subprocess.Popen(command, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if (out / "cells").is_dir() and len(finished(out)) >= 3:
            break
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    done = {p.name: (p / "experiment.json").stat().st_mtime_ns for p in finished(out)}
    assert 3 <= len(done) < 8, "the sweep must be killed half-way"
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert len(finished(out)) == 8
    for name, stamp in done.items():                       # finished cells: not rerun
        cell = out / "cells" / name
        assert (cell / "experiment.json").stat().st_mtime_ns == stamp
        assert len((cell / "environment.jsonl").read_text().splitlines()) == 1
    starts = {p.name: [json.loads(x)["action"] for x in
                       (p / "environment.jsonl").read_text().splitlines()]
              for p in cell_dirs(out) if p.name not in done}
    assert all(actions in (["new"], ["new", "resume"]) for actions in starts.values()), starts
    assert f"{len(done)} finished earlier, {8 - len(done)} run now" in result.stdout


def test_process_pool_runs_one_torch_thread_per_worker(tmp_path):
    result = sweep("two_phase", tmp_path / "sw", overrides=BASE,
                   grid={"learner.lr": [0.1, 0.3]}, backend="processes", workers=2)
    assert not result.failed and len(finished(tmp_path / "sw")) == 2
    for cell in cell_dirs(tmp_path / "sw"):
        env = json.loads((cell / "environment.jsonl").read_text().splitlines()[-1])
        assert env["torch_num_threads"] == 1 and env["OMP_NUM_THREADS"] == "1"
        assert env["pid"] != os.getpid()


def test_ray_backend(tmp_path):
    pytest.importorskip("ray")
    result = sweep("two_phase", tmp_path / "sw", overrides=BASE, grid={"learner.lr": [0.1]},
                   seeds=[0, 1], backend="ray", workers=2)
    assert not result.failed and len(finished(tmp_path / "sw")) == 2
    for cell in cell_dirs(tmp_path / "sw"):
        env = json.loads((cell / "environment.jsonl").read_text().splitlines()[-1])
        assert env["torch_num_threads"] == 1 and env["pid"] != os.getpid()


def test_without_ray_the_error_gives_the_install_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "ray", None)          # import ray fails
    assert main(["sweep", "two_phase", "--grid", "model.mu=0.1,0.2", "--out",
                 str(tmp_path / "sw")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and 'pip install -e ".[sweep]"' in err[0] and "processes" in err[0]
    assert not (tmp_path / "sw").exists()


def test_another_sweep_in_the_same_directory_is_refused(tmp_path):
    sweep("two_phase", tmp_path / "sw", overrides=BASE, grid={"learner.lr": [0.1]},
          backend="serial")
    with pytest.raises(ConfigError, match="holds another sweep"):
        sweep("two_phase", tmp_path / "sw", overrides=BASE, grid={"learner.lr": [0.2]},
              backend="serial")


def test_random_search_cells_are_seeded_and_in_range():
    space = {"model.mu": {"low": 0.01, "high": 0.4, "log": True},
             "training.batch_size": {"low": 8, "high": 64},
             "model.transfer": ["tanh", "leaky_relu"]}
    cells = make_cells(random=space, samples=5, seeds=[0, 1, 2], sample_seed=3)
    assert len(cells) == 15
    assert [c.overrides for c in cells] == [c.overrides for c in
                                           make_cells(random=space, samples=5, seeds=[0, 1, 2],
                                                      sample_seed=3)]
    for c in cells:
        assert 0.01 <= c.overrides["model.mu"] <= 0.4
        assert isinstance(c.overrides["training.batch_size"], int)
        assert c.overrides["model.transfer"] in ("tanh", "leaky_relu")
        assert c.overrides["model.seed"] == c.overrides["training.seed"] == c.seed
    draws = {c.assignment() for c in cells}
    assert len(draws) == 5                                 # each draw runs with every seed
    assert len({c.name for c in cells}) == 15


def test_options_and_section_are_checked():
    assert parse_grid_option("model.sizes=[64,32,10],[64,16,10]") == \
        ("model.sizes", [[64, 32, 10], [64, 16, 10]])
    assert parse_grid_option("model.transfer=tanh,leaky_relu") == \
        ("model.transfer", ["tanh", "leaky_relu"])
    assert parse_random_option("model.mu=1e-3:1e-1:log") == \
        ("model.mu", {"low": 1e-3, "high": 1e-1, "log": True})
    assert validate_sweep({"grid": {"model": {"mu": [0.1]}}}) == {"grid": {"model.mu": [0.1]}}
    for bad, match in [({"grid": {"mu": [0.1]}}, "section.key"),
                       ({"random": {"model.mu": {"low": 1, "high": 0}}, "samples": 2}, "low"),
                       ({"random": {"model.mu": [0.1]}}, "samples"),
                       ({"seedz": [1]}, "sweep.seedz")]:
        with pytest.raises(ConfigError, match=match):
            validate_sweep(bad)
    with pytest.raises(ConfigError, match="--random model.mu"):
        parse_random_option("model.mu=0.1:0.2:lin")


def test_figure_axis_is_logarithmic_for_keys_spanning_a_decade(tmp_path, monkeypatch):
    """A swept key whose positive values span 10x or more (0.03, 0.1, 0.3) is drawn on a log
    axis; one that does not (0.1, 0.2) on a linear one."""
    from dendrite_sim.frontend import plots, sweep
    drawn = {}
    monkeypatch.setattr(plots, "save", lambda fig, path, **kw: drawn.setdefault(
        Path(path).name, fig.axes[0].get_xscale()) and path)
    rows = [{"model.feedback_damping": d, "model.mu": mu, "seed": s,
             "test_accuracy": 0.8 - d + 0.01 * s}
            for d in (0.03, 0.1, 0.3) for mu in (0.1, 0.2) for s in (0, 1)]
    sweep._figures(rows, ["model.feedback_damping", "model.mu"], "test_accuracy", tmp_path,
                   grid=True)
    assert drawn == {"test_accuracy_vs_model.feedback_damping.png": "log",
                     "test_accuracy_vs_model.mu.png": "linear"}
