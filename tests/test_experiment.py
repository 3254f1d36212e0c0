"""run_experiment as a library call, the [learner] section and baselines, and run directories
that are safe in parallel: unique names, atomic creation, resume from anywhere, records
appended, one-line errors, compare over mixed folders."""
import json
import shutil
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from dendrite_sim import run_experiment
from dendrite_sim.cli import main
from dendrite_sim.frontend import experiment
from dendrite_sim.frontend.config import (ConfigError, build_data, build_model, load_config,
                                          validate_config)
from dendrite_sim.learning import BackpropLearner, train

# two mini-batches per epoch on 64 digits, a narrow hidden layer, evaluations every half epoch
TINY = ["data.max_train=64", "data.max_test=32", "model.sizes=[64,8,10]",
        "training.batch_size=32", "training.eval_every=0.5", "training.n_eig=0",
        "output.figures=false"]
#: trajectory arrays that are not measured durations
TIMED = ("wall_time", "step_wall_time")


def tiny(*extra, epochs=1):
    return load_config("two_phase", TINY + [f"training.epochs={epochs}", *extra])


def trajectories(run: Path) -> dict:
    with np.load(run / "trajectory.npz") as z:
        return {k: z[k] for k in z.files if not any(t in k for t in TIMED)}


def assert_same_trajectory(a: Path, b: Path):
    ta, tb = trajectories(a), trajectories(b)
    assert ta.keys() == tb.keys()
    for key in ta:
        np.testing.assert_array_equal(ta[key], tb[key], err_msg=key)


def one_line_error(err: str, *needles):
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("dendrite-sim: error: "), err
    for needle in needles:
        assert needle in lines[0], (needle, err)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """Two epochs straight through (the dendritic learner and the backprop baseline)."""
    out = tmp_path_factory.mktemp("ref") / "run"
    return out, run_experiment(tiny(epochs=2), out)


# -- the library call -------------------------------------------------------------------------
def test_run_experiment_returns_the_summary_and_prints_nothing(tmp_path, capsys):
    summary = run_experiment(tiny(), tmp_path / "run")
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""
    assert summary["status"] == "trained" and summary["complete"]
    assert list(summary["learners"]) == ["dendritic", "backprop"]
    assert summary["baselines"] == ["backprop"] and summary["skipped_baselines"] == {}
    stored = json.loads((tmp_path / "run" / "experiment.json").read_text())
    assert stored["learners"].keys() == summary["learners"].keys()
    for name, sub in (("dendritic", "."), ("backprop", "backprop")):
        with np.load(tmp_path / "run" / sub / "trajectory.npz") as z:
            assert summary["learners"][name]["final"]["test_accuracy"] == z["test_accuracy"][-1]
            assert summary["learners"][name]["final"]["epoch"] == 1.0


def test_baseline_has_the_same_data_initial_weights_and_batches(reference, tmp_path):
    """A backprop learner trained by hand on a fresh model of the same configuration gives the
    baseline's trajectory exactly."""
    out, _ = reference
    cfg = tiny(epochs=2)
    data = build_data(cfg)
    learner = BackpropLearner(build_model(cfg, data), lr=cfg["training"]["backprop_lr"],
                              loss=cfg["training"]["loss"])
    tr = cfg["training"]
    train(learner, data, epochs=2, batch_size=tr["batch_size"], eval_every=tr["eval_every"],
          seed=tr["seed"], n_eig=0, progress=False, out_dir=tmp_path)
    assert_same_trajectory(out / "backprop", tmp_path)


def test_run_experiment_takes_a_model_name_and_a_raw_dict(tmp_path):
    raw = {"model": {"name": "two_phase", "sizes": [64, 8, 10]},
           "data": {"name": "digits", "max_train": 32, "max_test": 16},
           "training": {"epochs": 1, "baseline": False, "n_eig": 0},
           "output": {"figures": False}}
    summary = run_experiment(raw, tmp_path / "raw")
    assert list(summary["learners"]) == ["dendritic"]
    with pytest.raises(ValueError, match="config"):
        run_experiment(3.5, tmp_path / "bad")


# -- [learner] and baselines ------------------------------------------------------------------
def test_learner_section_selects_the_learner(tmp_path):
    summary = run_experiment(tiny("learner.name=backprop", "learner.lr=0.3",
                                  "training.baseline=false"), tmp_path / "bp")
    assert summary["learner"] == "backprop" and list(summary["learners"]) == ["backprop"]
    stored = json.loads((tmp_path / "bp" / "summary.json").read_text())
    assert stored["config"]["learner"]["learner"] == "backprop"
    assert stored["config"]["learner"]["lr"] == 0.3


def test_learner_keys_and_training_keys_are_one_setting():
    cfg = tiny("learner.eta_hat=0.2", "learner.mode=coupled")
    assert cfg["training"]["eta_hat"] == 0.2 and cfg["training"]["mode"] == "coupled"
    assert validate_config(cfg) == cfg
    assert tiny("training.mode=coupled")["learner"]["mode"] == "coupled"
    raw = {"model": {"name": "two_phase", "sizes": [64, 8, 10]}, "learner": {"eta_hat": 0.2},
           "training": {"eta_hat": 0.3}}
    with pytest.raises(ConfigError, match="learner.eta_hat .* training.eta_hat"):
        validate_config(raw)
    with pytest.raises(ConfigError, match="learner.name must be one of"):
        tiny("learner.name=no_such_rule")
    with pytest.raises(ConfigError, match=r"learner\.schedule .* \[schedule\]"):
        validate_config({"model": {"name": "two_phase", "sizes": [64, 8, 10]},
                         "learner": {"schedule": 1}})


def test_baselines_list_and_baseline_false():
    assert tiny()["training"]["baselines"] == ["backprop"]
    assert tiny("training.baseline=false")["training"]["baselines"] == []
    both = tiny('training.baselines=["backprop", "feedback_alignment"]')
    assert both["training"]["baselines"] == ["backprop", "feedback_alignment"]
    assert validate_config(both) == both
    with pytest.raises(ConfigError, match="training.baselines: unknown learner 'nope'"):
        tiny('training.baselines=["nope"]')


def test_baseline_without_a_forward_map_is_skipped_with_a_warning(tmp_path, monkeypatch):
    cls = type(build_model(tiny()))
    monkeypatch.setattr(cls, "forward_params", ())
    summary = run_experiment(tiny(), tmp_path / "run")
    assert list(summary["learners"]) == ["dendritic"]
    assert "forward map" in summary["skipped_baselines"]["backprop"]
    assert any("baseline 'backprop' skipped" in w for w in summary["warnings"])


# -- run directories --------------------------------------------------------------------------
def test_runs_started_in_the_same_second_get_separate_directories(tmp_path, monkeypatch):
    monkeypatch.setattr(time, "strftime", lambda *a: "20250101-000000")
    made = []
    threads = [threading.Thread(target=lambda: made.append(experiment.new_run_dir(
        tmp_path, "two_phase"))) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(made)) == 8 and all(p.is_dir() for p in made)
    # a collision draws a new suffix instead of sharing the directory
    draws = iter(["aaaaaa", "aaaaaa", "bbbbbb"])
    monkeypatch.setattr(experiment.secrets, "token_hex", lambda n: next(draws))
    first, second = (experiment.new_run_dir(tmp_path, "x") for _ in range(2))
    assert first.name.endswith("aaaaaa") and second.name.endswith("bbbbbb")


def test_default_run_directories_are_unique(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = tiny("training.baseline=false")
    a, b = (run_experiment(cfg)["run_dir"] for _ in range(2))
    assert a != b and Path(a).parent == Path(b).parent == Path("runs")


def test_a_run_never_writes_into_a_locked_directory(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with experiment._locked(out):
        with pytest.raises(experiment.RunDirError, match="in use by another run"):
            run_experiment(tiny(), out)


def test_resume_from_a_moved_directory_in_another_cwd_is_bit_for_bit(reference, tmp_path,
                                                                       monkeypatch, capsys):
    ref, _ = reference
    first = tmp_path / "first"
    run_experiment(tiny(), first)                   # one of the two epochs
    moved = tmp_path / "elsewhere" / "moved"
    moved.parent.mkdir()
    shutil.move(str(first), str(moved))
    other = tmp_path / "cwd"
    other.mkdir()
    monkeypatch.chdir(other)
    assert main(["run", str(moved), "--resume", "--set", "training.epochs=2", "--quiet"]) == 0
    assert not (other / "runs").exists() and not (first.exists())
    assert_same_trajectory(ref, moved)
    assert_same_trajectory(ref / "backprop", moved / "backprop")
    lines = [json.loads(x) for x in (moved / "environment.jsonl").read_text().splitlines()]
    assert [x["action"] for x in lines] == ["new", "resume"]
    assert "--resume" in lines[1]["command"]
    assert "dir" not in load_config(str(moved))["output"]
    capsys.readouterr()
    # a finished run: said so, not trained again
    stamp = (moved / "trajectory.npz").stat().st_mtime_ns
    assert main(["run", str(moved), "--resume", "--set", "training.epochs=2"]) == 0
    assert "already complete" in capsys.readouterr().out
    assert (moved / "trajectory.npz").stat().st_mtime_ns == stamp
    assert len((moved / "environment.jsonl").read_text().splitlines()) == 2


@pytest.mark.parametrize("make, needles", [
    (lambda root: root / "runs" / "no_such_dir", ["holds no run", "no such directory"]),
    (lambda root: (root / "empty").mkdir() or root / "empty", ["holds no run"]),
])
def test_resume_without_a_run_fails_with_one_line(make, needles, tmp_path, capsys):
    assert main(["run", str(make(tmp_path)), "--resume"]) == 2
    one_line_error(capsys.readouterr().err, *needles)


def test_resume_a_model_name_and_overwrite_errors_speak_cli(reference, capsys):
    assert main(["run", "two_phase", "--resume"]) == 2
    one_line_error(capsys.readouterr().err, "--resume", "RUN_DIR")
    out, _ = reference
    assert main(["run", "two_phase", *sum((["--set", s] for s in TINY), []), "--out",
                 str(out), "--quiet"]) == 2
    one_line_error(capsys.readouterr().err, "--resume", "--overwrite", "--out")


def test_compare_over_a_mixed_runs_folder(reference, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    runs = tmp_path / "runs"
    runs.mkdir()
    shutil.copytree(reference[0], runs / "trained")
    assert main(["simulate", "mixture", "--out", str(runs / "simulated")]) == 0
    (runs / "notes").mkdir()
    capsys.readouterr()
    assert main(["compare", *sorted(str(p) for p in runs.iterdir())]) == 0
    out = capsys.readouterr().out
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert len(rows) == 3 and "dendritic" in rows[1] and "backprop" in rows[2]
    skipped = [line for line in out.splitlines() if line.startswith("skipped")]
    assert len(skipped) == 1 and "simulated" in skipped[0] and "notes" in skipped[0]
    assert main(["compare", str(runs / "notes")]) == 2
    one_line_error(capsys.readouterr().err, "no training run", "notes")


def test_environment_record_is_appended_never_overwritten(tmp_path):
    out = tmp_path / "run"
    cfg = tiny("training.baseline=false")
    run_experiment(cfg, out)
    run_experiment(cfg, out, overwrite=True)
    actions = [json.loads(x)["action"] for x in (out / "environment.jsonl").read_text()
               .splitlines()]
    assert actions == ["new", "overwrite"]
    with pytest.raises(ValueError, match="exclude each other"):
        run_experiment(cfg, out, resume=True, overwrite=True)



def test_mu_close_to_half_is_warned_and_recorded(tmp_path):
    from dendrite_sim.models import Mixture
    with pytest.warns(RuntimeWarning, match=r"mu = 0.4999 is close to 0.5.*0.9996"):
        Mixture([4, 4, 4], mu=0.4999)
    summary = run_experiment(tiny("model.mu=0.4999", "training.baseline=false"), tmp_path)
    assert [w for w in summary["warnings"] if "mu = 0.4999 is close to 0.5" in w]
