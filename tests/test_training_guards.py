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
    # whether the run-away weights or the unconverged equilibria they cause are met first,
    # the cause is traced to the weight whose rate was raised
    for needle in ("TwoPhaseDTP, learner 'dendritic'", "W_1 grew from norm",
                   "lower the learning rate that updates W", "[batch ", "simulated time",
                   "the last good checkpoint, after batch 0, is kept in"):
        assert needle in text, text
    assert checkpoint_loads(cfg, tmp_path) == 0


def test_coupled_mode_at_training_rates_names_the_run_away(tmp_path):
    """Coupled mode (the exponential integrator at 3 tau) at the training rates: the first
    presentation, the diagnostics' of the probe batch, blows up; the error says where and
    names coupled mode's positive feedback and what to lower."""
    cfg = load_config("two_phase", TINY + ["training.mode=coupled", "solver.method=etdrk4",
                                           "solver.step_size=3", "output.figures=false"])
    with pytest.raises(NumericalError) as err:
        run_experiment(cfg, tmp_path)
    text = str(err.value)
    for needle in ("TwoPhaseDTP, learner 'dendritic'", "NaN/inf", "diagnostics' presentation",
                   "coupled mode integrates the weights", "positive feedback",
                   "lower the model's rates", "[batch 1 of 3"):
        assert needle in text, text


def test_diverging_baseline_keeps_the_figures_of_the_finished_learner(tmp_path):
    cfg = load_config("two_phase", TINY + ["model.sizes=[64,16,10]",
                                           "training.backprop_lr=1e6", "training.n_eig=1"])
    with pytest.raises(NumericalError, match=r"TwoPhaseDTP, baseline 'backprop': training "
                                             r"diverged: \w+_\d ran away"):
        run_experiment(cfg, tmp_path)
    assert (tmp_path / "figures" / "learning_curves.png").is_file()
    assert (tmp_path / "summary.json").is_file()          # the finished dendritic run
    assert checkpoint_loads(cfg, tmp_path / "backprop", "backprop") == 0


def far_targets(n=8, value=3.0):
    """Regression targets outside tanh's range (-1, 1)."""
    import numpy as np
    from dendrite_sim.frontend.data import Dataset
    x = np.random.default_rng(0).standard_normal((n, 6))
    y = np.full((n, 6), value)
    return Dataset(x, y, x, y, None, "regression", "far_targets", "targets outside (-1, 1)")


def test_target_outside_the_tanh_inverse_domain(tmp_path):
    """Exact inverses of a tanh network, nudged to targets out of (-1, 1): the equilibrium is
    not reached within the budget, training stops at that batch, names the inverse domain
    and the rate to lower (found by looking at the nudged targets), and keeps its checkpoint;
    ``on_unconverged="skip"`` goes on without applying such updates."""
    from dendrite_sim.learning import DendriticLearner, train
    from dendrite_sim.models import Mixture

    def learner(**kw):
        model = Mixture([6, 6, 6], transfer="tanh", feedback="exact", dtype=torch.float64)
        return DendriticLearner(model, loss="mse", eta_hat=1.0,
                                present_kwargs={"max_seconds": 0.5}, **kw)

    with pytest.raises(NumericalError) as err:
        train(learner(), far_targets(), epochs=1, batch_size=8, out_dir=tmp_path,
              progress=False)
    text = str(err.value)
    for needle in ("no stable equilibrium", "cannot be trusted", "inverse domain (-1.0, 1.0)",
                   "lower eta_hat (now 1)", "[batch 1 of 1", "after batch 0, is kept"):
        assert needle in text, text
    fresh = learner()
    fresh.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["learner"])
    skipping = learner(on_unconverged="skip")
    before = [w.clone() for w in skipping.params["W"]]
    train(skipping, far_targets(), epochs=1, batch_size=8, progress=False)
    assert skipping.unconverged_presentations >= 1     # (the diagnostics present too)
    assert all(torch.equal(a, b) for a, b in zip(before, skipping.params["W"]))


def test_unstable_equilibrium_stops_training(tmp_path):
    """Identity layers, exact inverses and feedback gain 10 (mu = 0.1): the nudged
    equilibrium is a saddle (leading eigenvalue > 0, test_errors.py's closed form), which a
    root finder reaches but the dynamics would leave. Training stops there and says so."""
    import numpy as np
    from dendrite_sim.frontend.data import Dataset
    from dendrite_sim.learning import DendriticLearner, train
    from dendrite_sim.models import Mixture
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((8, 3)), rng.standard_normal((8, 3))
    data = Dataset(x, y, x, y, None, "regression", "r", "random regression")
    model = Mixture([3, 3, 3, 3], mu=0.1, feedback="exact", transfer="identity", seed=1,
                    dtype=torch.float64, feedback_gain=10.0)
    learner = DendriticLearner(model, loss="mse", eta_hat=1.0,
                               present_kwargs={"max_seconds": 1.0})
    with pytest.raises(NumericalError, match=r"no stable equilibrium \(phase '\w+', example "
                                             r"\d+: unstable \(residual .*leading eigenvalue "
                                             r"\+0\.\d+\)\).*\[batch 1 of 1.*kept in"):
        train(learner, data, epochs=1, batch_size=8, out_dir=tmp_path, progress=False)
    learner.load_state_dict(torch.load(tmp_path / "checkpoint.pt", weights_only=True)["learner"])


def test_unconverged_policy_is_checked():
    from dendrite_sim.learning import DendriticLearner
    from dendrite_sim.models import Mixture
    with pytest.raises(ValueError, match=r"on_unconverged must be one of \['stop', 'skip', "
                                         r"'continue'\]"):
        DendriticLearner(Mixture([4, 4, 4]), on_unconverged="ignore")
