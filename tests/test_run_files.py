"""A run directory is consistent at every instant and reproducible byte for byte: the
checkpoint, trajectory and summary of one position are committed in that order (a reader can
tell each one's position), ``complete`` is written last, a resume repairs what a kill left
(views behind the checkpoint, temporary files) and the same seed gives the same trajectory
bytes."""
import json

import numpy as np
import pytest
import torch

from dendrite_sim import run_experiment
from dendrite_sim.frontend import experiment
from dendrite_sim.frontend.config import load_config
from dendrite_sim.learning import BackpropLearner, History, train
from dendrite_sim.learning.files import remove_temporaries
from dendrite_sim.models import Mixture

TINY = ["data.max_train=64", "data.max_test=32", "model.sizes=[64,8,10]",
        "training.batch_size=32", "training.eval_every=0.5", "training.n_eig=0",
        "training.epochs=1"]


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs (BaseException, like KeyboardInterrupt)."""


def positions(out) -> dict:
    """The position (batches trained) that each of the three files holds."""
    summary = json.loads((out / "summary.json").read_text())
    with np.load(out / "trajectory.npz") as z:
        trajectory = int(z["batches"][-1])
    return {"checkpoint": int(torch.load(out / "checkpoint.pt", weights_only=True)["step"]),
            "trajectory": trajectory, "summary": int(summary["timing"]["batches"]),
            "complete": summary["complete"]}


def learner():
    return BackpropLearner(Mixture([64, 8, 10], feedback="learned", seed=3), lr=0.1)


@pytest.fixture(scope="module")
def data():
    from dendrite_sim.frontend.data import Dataset, load_dataset
    d = load_dataset("digits")
    return Dataset(d.x_train[:96], d.y_train[:96], d.x_test[:32], d.y_test[:32], 10,
                   "classification", "digits_96", "the first 96/32 digits")


KW = dict(epochs=2, batch_size=32, eval_every=1 / 3, progress=False)


def test_kill_between_checkpoint_and_views_is_visible_and_repaired(tmp_path, data, monkeypatch):
    train(learner(), data, out_dir=tmp_path / "whole", **KW)
    # the last commit dies after its checkpoint, before the trajectory is replaced
    real, calls = History.to_npz, {"n": 0}

    def dies_on_last(self, path):
        calls["n"] += 1
        if calls["n"] == 7:          # initial point + 6 evaluations: the last one
            raise Killed
        return real(self, path)

    monkeypatch.setattr(History, "to_npz", dies_on_last)
    with pytest.raises(Killed):
        train(learner(), data, out_dir=tmp_path / "cut", **KW)
    monkeypatch.setattr(History, "to_npz", real)
    # the reader can tell: the views hold the previous position, not complete
    assert positions(tmp_path / "cut") == {"checkpoint": 6, "trajectory": 5, "summary": 5,
                                           "complete": False}
    train(learner(), data, out_dir=tmp_path / "cut", resume=True, **KW)
    assert positions(tmp_path / "cut") == {"checkpoint": 6, "trajectory": 6, "summary": 6,
                                           "complete": True}
    assert ((tmp_path / "cut" / "trajectory.npz").read_bytes()
            == (tmp_path / "whole" / "trajectory.npz").read_bytes())


def test_summary_is_written_after_the_trajectory(tmp_path, data, monkeypatch):
    """At every commit, the summary (which carries ``complete``) comes last."""
    order = []
    import dendrite_sim.learning.loop as loop
    real_json, real_npz = loop._write_json, History.to_npz
    monkeypatch.setattr(loop, "_write_json",
                        lambda path, obj: (order.append(path.name), real_json(path, obj))[1])
    monkeypatch.setattr(History, "to_npz",
                        lambda self, path: (order.append(path.name), real_npz(self, path))[1])
    train(learner(), data, out_dir=tmp_path, **KW)
    assert order == ["trajectory.npz", "summary.json"] * 7


def test_same_seed_same_trajectory_bytes(tmp_path):
    """Two runs of one configuration and seed (CPU): identical trajectory files, learner and
    baseline; the wall times differ and live in summary.json."""
    cfg = load_config("two_phase", TINY + ["output.figures=false"])
    a = run_experiment(cfg, tmp_path / "a")
    b = run_experiment(cfg, tmp_path / "b")
    for sub in ("", "backprop"):
        ta = (tmp_path / "a" / sub / "trajectory.npz").read_bytes()
        assert ta == (tmp_path / "b" / sub / "trajectory.npz").read_bytes(), sub or "learner"
    hist = History.from_npz(tmp_path / "a" / "trajectory.npz")
    assert np.all(np.diff(hist.wall_time) > 0) and len(hist.wall_time) == len(hist.examples)
    fa, fb = (s["learners"]["dendritic"]["final"] for s in (a, b))
    assert {k: v for k, v in fa.items() if "wall" not in k} == \
        {k: v for k, v in fb.items() if "wall" not in k}


def test_kill_during_figures_then_resume(tmp_path, monkeypatch):
    """The record that says ``complete`` is written after the figures: a kill while drawing
    leaves no record, and the resume draws them, writes it and removes the temporary files a
    kill leaves behind."""
    import dendrite_sim.frontend.figures as figures
    cfg = load_config("two_phase", TINY)
    real = figures.make_figures

    def killed(*args, **kwargs):
        raise Killed

    monkeypatch.setattr(figures, "make_figures", killed)
    run = tmp_path / "run"
    with pytest.raises(Killed):
        run_experiment(cfg, run)
    assert not (run / experiment.RECORD).exists()
    monkeypatch.setattr(figures, "make_figures", real)
    (run / "figures").mkdir(exist_ok=True)
    stale = [run / ".config.toml.x1.tmp", run / "figures" / ".alignment.png.x2.tmp",
             run / "backprop" / ".trajectory.npz.x3.tmp"]
    for path in stale:
        path.write_bytes(b"half")
    summary = run_experiment(None, run, resume=True)
    assert summary["complete"] and summary["figures"]
    assert all((run / "figures" / name).is_file() for name in summary["figures"])
    assert not [p for p in stale if p.exists()]
    assert json.loads((run / experiment.RECORD).read_text())["complete"] is True


def test_remove_temporaries_touches_only_atomic_write_leftovers(tmp_path):
    keep = [tmp_path / "summary.json", tmp_path / "notes.tmp", tmp_path / ".hidden"]
    gone = [tmp_path / ".summary.json.abc123.tmp"]
    for path in keep + gone:
        path.write_text("x")
    assert sorted(remove_temporaries(tmp_path)) == gone
    assert all(p.exists() for p in keep) and not gone[0].exists()


def test_corrupt_checkpoint_is_one_clear_error(tmp_path, data):
    train(learner(), data, out_dir=tmp_path, **KW)
    (tmp_path / "checkpoint.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=r"resume: .*checkpoint.pt cannot be read.*overwrite"):
        train(learner(), data, out_dir=tmp_path, resume=True, **KW)


def test_out_dir_that_is_a_file_is_one_clear_error(tmp_path, data):
    path = tmp_path / "a_file"
    path.write_text("mine")
    with pytest.raises(ValueError, match="out_dir .* exists and is not a directory"):
        train(learner(), data, out_dir=path, **KW)
    assert path.read_text() == "mine"
