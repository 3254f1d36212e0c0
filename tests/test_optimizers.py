"""Update rules (dendrite_sim.learning.optimizers): the step taken from a learner's proposed
change. References: ``torch.optim`` driven by the backprop gradient (itself checked against
finite differences in test_training.py), and Adam's closed-form first step."""
import pytest
import torch

from dendrite_sim.data import Dataset, load_digits
from dendrite_sim.frontend.config import ConfigError, load_config
from dendrite_sim.learning import BackpropLearner, DendriticLearner, train
from dendrite_sim.learning.learners.backprop import backprop_gradient
from dendrite_sim.learning.optimizers import Adam, Momentum, make_update_rule
from dendrite_sim.models import Mixture

F64 = torch.float64


@pytest.fixture(scope="module")
def digits():
    d = load_digits()
    return Dataset(d.x_train[:96], d.y_train[:96], d.x_test[:64], d.y_test[:64], 10,
                   "classification", "digits_small", "first examples of the digits split")


def bp_learner(lr=0.2):
    return BackpropLearner(Mixture([64, 24, 10], feedback="learned", bias=True, seed=4,
                                   dtype=F64), lr=lr)


def by_torch_optim(learner, data, make_optim, epochs, seed):
    """The loop's batches (one generator seeded with ``seed``, a permutation per epoch), the
    backprop gradient, and a ``torch.optim`` optimizer over copies of the parameters."""
    params = {n: [p.clone().requires_grad_(True) for p in learner.params[n]] for n in ("W", "b")}
    optim = make_optim([p for v in params.values() for p in v])
    x, y, _, _ = data.tensors(dtype=F64, device=torch.device("cpu"))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(x), generator=gen)
        for start in range(0, len(x), 32):
            idx = perm[start:start + 32]
            target = torch.nn.functional.one_hot(y[idx], 10).to(F64)
            grads = backprop_gradient(learner.model, {n: [p.detach() for p in v]
                                                      for n, v in params.items()},
                                      x[idx], target, "cross_entropy")
            for n in params:
                for p, g in zip(params[n], grads[n]):
                    p.grad = g.clone()
            optim.step()
    return params


@pytest.mark.parametrize("rule, make_optim", [
    # Delta = -lr g, so Adam on Delta is torch's Adam with eps / lr (module docstring)
    (Adam(lr=0.01, momentum=0.8, beta2=0.99, eps=1e-6),
     lambda ps: torch.optim.Adam(ps, lr=0.01, betas=(0.8, 0.99), eps=1e-6 / 0.2)),
    (Momentum(0.7), lambda ps: torch.optim.SGD(ps, lr=0.2, momentum=0.7)),
])
def test_rule_on_backprop_equals_torch_optim(digits, rule, make_optim):
    learner, reference = bp_learner(), bp_learner()
    initial = learner.params["W"][0].clone()
    train(learner, digits, epochs=3, batch_size=32, seed=5, optimizer=rule, progress=False)
    expected = by_torch_optim(reference, digits, make_optim, epochs=3, seed=5)
    for n in ("W", "b"):
        for mine, ref in zip(learner.params[n], expected[n]):
            torch.testing.assert_close(mine, ref.detach(), rtol=1e-9, atol=1e-11)
    assert (learner.params["W"][0] - initial).norm() > 0.01 * initial.norm()


def test_adam_first_step_is_lr_times_sign_of_the_dendritic_change(digits):
    """At t = 1, m_hat = Delta and v_hat = Delta^2: the step is lr Delta / (|Delta| + eps),
    whatever the scale of Delta (the network's rate eta)."""
    x = torch.as_tensor(digits.x_train[:16], dtype=F64)
    y = torch.as_tensor(digits.y_train[:16])
    for eta in (0.05, 0.5):
        model = Mixture([64, 16, 10], feedback="learned", bias=True, seed=2, eta=eta, dtype=F64)
        plain, adam = DendriticLearner(model), DendriticLearner(model)
        before = {n: [p.clone() for p in plain.params[n]] for n in ("W", "b")}
        proposed, _ = plain.propose(x, y)
        adam.step(x, y, optimizer=Adam(lr=1e-3, eps=1e-12))
        for n, old in before.items():
            for new, o, p in zip(adam.params[n], old, proposed[n]):
                delta = p - o
                expected = 1e-3 * delta / (delta.abs() + 1e-12)
                torch.testing.assert_close(new - o, expected, rtol=1e-6, atol=1e-12)
                assert (delta.abs() > 1e-9).float().mean() > 0.5    # a real change


def test_adam_resume_continues_bit_for_bit(tmp_path, digits):
    kw = dict(batch_size=32, eval_every=0.5, progress=False, seed=1)
    straight = bp_learner()
    train(straight, digits, epochs=3, out_dir=tmp_path / "full", optimizer="adam", **kw)
    short = bp_learner()
    train(short, digits, epochs=1, out_dir=tmp_path / "ext", optimizer="adam", **kw)
    train(short, digits, epochs=3, out_dir=tmp_path / "ext", optimizer="adam", resume=True, **kw)
    for n in ("W", "b"):
        for a, b in zip(straight.params[n], short.params[n]):
            assert torch.equal(a, b)
    with pytest.raises(ValueError, match="configuration"):      # another rule: not the same run
        train(bp_learner(), digits, epochs=3, out_dir=tmp_path / "ext", resume=True,
              optimizer=Adam(lr=0.01), **kw)


def test_bad_update_rules_name_the_setting():
    with pytest.raises(ValueError, match=r"optimizer must be one of \['sgd', 'momentum', 'adam'\]"):
        make_update_rule("rmsprop")
    with pytest.raises(ValueError, match=r"lr must lie in \(0.0, inf\]"):
        Adam(lr=0.0)
    with pytest.raises(ValueError, match=r"momentum must lie in \[0.0, 1.0\)"):
        Momentum(1.0)
    with pytest.raises(ValueError, match="'sgd' takes the settings"):
        make_update_rule("sgd", momentum=0.9)
    with pytest.raises(ConfigError, match=r"training.optimizer_lr must lie in \(0.0, inf\]"):
        load_config("two_phase", ["training.optimizer='adam'", "training.optimizer_lr=-1"])
    with pytest.raises(ConfigError, match=r"training.optimizer = 'sgd' takes none of "
                                          r"\['momentum'\]"):
        load_config("two_phase", ["training.momentum=0.9"])
    with pytest.raises(ConfigError, match="training.optimizer must be one of"):
        load_config("two_phase", ["training.optimizer='lbfgs'"])
