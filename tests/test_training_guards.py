"""Each numerical guard of a training run, driven on purpose: the error names the model and
learner (or baseline), the batch, the simulated time and the likely cause found by looking,
the last good checkpoint still loads, and the figures of what finished are written."""
import pytest
import torch

from dendrite_sim import run_experiment
from dendrite_sim.errors import NumericalError
from dendrite_sim.frontend.config import build_data, build_learner, build_model, build_schedule
from dendrite_sim.frontend.config import load_config

TINY = ["data.max_train=96", "data.max_test=32", "training.batch_size=32", "training.epochs=1",
        "training.eval_every=0.5", "training.n_eig=0"]


def checkpoint_loads(cfg, run_dir, *name):
    """The checkpoint left behind installs into a fresh learner of the same configuration."""
    ckpt = torch.load(run_dir / "checkpoint.pt", weights_only=True)
    model = build_model(cfg, build_data(cfg))
    learner = build_learner(cfg, model, build_schedule(cfg, model), *name)
    learner.load_state_dict(ckpt["learner"])
    return ckpt["step"]


def test_diverging_learning_rate(tmp_path):
    cfg = load_config("two_phase", TINY + ["model.sizes=[64,16,10]", "model.eta=1e4",
                                           "output.figures=false"])
    with pytest.raises(NumericalError) as err:
        run_experiment(cfg, tmp_path)
    text = str(err.value)
    for needle in ("TwoPhaseDTP, learner 'dendritic'", "ran away", "when training began",
                   "W_1 grew from norm", "lower the learning rate that updates W", "[batch ", "simulated time",
                   "the last good checkpoint, after batch 0, is kept in"):
        assert needle in text, text
    assert checkpoint_loads(cfg, tmp_path) == 0


def test_diverging_baseline_keeps_the_figures_of_the_finished_learner(tmp_path):
    cfg = load_config("two_phase", TINY + ["model.sizes=[64,16,10]",
                                           "training.backprop_lr=1e6", "training.n_eig=1"])
    with pytest.raises(NumericalError, match=r"TwoPhaseDTP, baseline 'backprop': training "
                                             r"diverged: \w+_\d ran away"):
        run_experiment(cfg, tmp_path)
    assert (tmp_path / "figures" / "learning_curves.png").is_file()
    assert (tmp_path / "summary.json").is_file()          # the finished dendritic run
    assert checkpoint_loads(cfg, tmp_path / "backprop", "backprop") == 0
