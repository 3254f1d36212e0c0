"""The discrete learners: protocol, registry, update equations against independent
computations, and the slow-learning limit of the two-phase DTP network."""
import pytest
import torch

from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.learning import present
from dendrite_sim.learning.learners import learner_class, learner_names
from dendrite_sim.learning.learners.gtp import INITS
from dendrite_sim.models import TwoPhaseDTP

D = torch.float64
DISCRETE = ["feedback_alignment", "tp_exact", "dtp_exact", "tp_ai", "dtp_ai", "tp_original",
            "dtp_original", "dtp_lee", "gtp"]


def _batch(n_in, n_out, seed=0, B=8):
    g = torch.Generator().manual_seed(seed)
    return (0.5 * torch.randn(B, n_in, generator=g, dtype=D),
            torch.randint(0, n_out, (B,), generator=g))


def _model(sizes=(5, 5, 5, 5), **kw):
    return TwoPhaseDTP(list(sizes), dtype=D, bias=True, slope=0.3, **kw)


@pytest.mark.parametrize("name", DISCRETE)
def test_learner_protocol_and_purity_of_propose(name):
    assert name in learner_names()
    m = _model()
    learner = learner_class(name)(m)
    x, y = _batch(5, 5)
    first, _ = learner.propose(x, y)
    again, _ = learner.propose(x, y)         # propose has no side effects (diagnostics)
    for n in first:
        for a, b in zip(first[n], again[n]):
            assert (a is None and b is None) or torch.equal(a, b)
    saved = learner.state_dict()
    before = learner.loss(x, y)
    for _ in range(3):
        learner.step(x, y)
    assert learner.loss(x, y) != before
    learner.load_state_dict(saved)
    assert learner.loss(x, y) == pytest.approx(before)
    assert learner.config()["learner"] == name
    torch.testing.assert_close(m.params["W"][0], TwoPhaseDTP([5, 5, 5, 5], dtype=D, bias=True,
                                                             slope=0.3).params["W"][0])


class _NoLayers:
    sizes = [3, 3]
    params = {"W": [torch.zeros(3, 3)], "b": [None]}
    layer_transfers = None
    dtype, device = torch.float32, torch.device("cpu")


@pytest.mark.parametrize("name", DISCRETE)
def test_a_model_without_layered_form_is_refused(name):
    with pytest.raises(ValueError, match="layered network"):
        learner_class(name)(_NoLayers())


def test_bad_options_name_the_parameter():
    with pytest.raises(ValueError, match="equal"):
        learner_class("tp_exact")(_model((5, 6, 4)))
    with pytest.raises(ValueError, match="eta_hat"):
        learner_class("dtp_ai")(_model(), eta_hat=0.0)
    with pytest.raises(ValueError, match="init"):
        learner_class("gtp")(_model(), init="xavier")


def _fd_local_gradient(W, b, s, h_prev, target):
    """d/dW of mean_b 1/2 ||s(W h + b) - target||^2 by autograd (independent of the rules)."""
    W = W.clone().requires_grad_(True)
    loss = 0.5 * ((s(h_prev @ W.T + b) - target) ** 2).sum(-1).mean()
    return torch.autograd.grad(loss, W)[0]


def test_dtp_ai_update_is_the_gradient_of_the_local_loss_at_the_difference_targets():
    m = _model((4, 5, 5, 3))
    learner = learner_class("dtp_ai")(m, lr=0.5, eta_hat=0.2, loss="mse", lr_inv=0.0)
    x = _batch(4, 3)[0]
    y = torch.randn(8, 3, dtype=D, generator=torch.Generator().manual_seed(3))
    new, _ = learner.propose(x, y)
    h, _ = learner.forward(x)
    s = learner.transfers
    P = m.params
    hat3 = h[3] - 0.2 * (h[3] - y)
    g = lambda i, v: (s[i].inverse(v) - P["b"][i]) @ P["Q"][i - 1].T      # Q_i s^{-1}
    hat2 = h[2] + g(2, hat3) - g(2, h[3])
    hat1 = h[1] + g(1, hat2) - g(1, h[2])
    for i, hat in ((1, hat1), (2, hat2), (3, hat3)):
        grad = _fd_local_gradient(P["W"][i - 1], P["b"][i - 1], s[i - 1], h[i - 1], hat)
        torch.testing.assert_close(new["W"][i - 1], P["W"][i - 1] - 0.5 * grad)


def test_tp_exact_keeps_exact_inverses_over_training():
    m = _model((5, 5, 5, 5))
    learner = learner_class("tp_exact")(m, lr=0.2, eta_hat=0.5, loss="cross_entropy")
    x, y = _batch(5, 5)
    for _ in range(20):
        learner.step(x, y)
    for W, W_inv in zip(learner.params["W"][1:], learner.params["W_inv"][1:]):
        torch.testing.assert_close(W_inv, torch.linalg.inv(W), rtol=1e-8, atol=1e-8)


def test_randomized_tp_updates_one_layer_per_step():
    learner = learner_class("dtp_ai")(_model(), randomized=True, lr_inv=0.0)
    x, y = _batch(5, 5)
    for _ in range(5):
        info = learner.step(x, y)
        assert sum(n > 0 for n in info["dW_norm"]) == 1
        assert info["layers"][0] in (1, 2, 3)


def test_feedback_alignment_with_transposed_feedback_is_backprop():
    m = _model((4, 6, 5, 3))
    fa = learner_class("feedback_alignment")(m, lr=0.3, loss="mse")
    fa.feedback = [w.T.clone() for w in m.params["W"][1:]]
    bp = learner_class("backprop")(m, lr=0.3, loss="mse")
    x = _batch(4, 3)[0]
    y = torch.randn(8, 3, dtype=D, generator=torch.Generator().manual_seed(2))
    new_fa, _ = fa.propose(x, y)
    new_bp, _ = bp.propose(x, y)
    for a, b in zip(new_fa["W"] + new_fa["b"], new_bp["W"] + new_bp["b"]):
        torch.testing.assert_close(a, b)


def test_gtp_single_euler_step_target_and_delta_rule():
    m = _model((4, 6, 3), transfer="sigmoid")
    learner = learner_class("gtp")(m, lr=0.7, tau=0.3, loss="mse")
    x = _batch(4, 3)[0]
    y = torch.rand(8, 3, dtype=D, generator=torch.Generator().manual_seed(4))
    new, _ = learner.propose(x, y)
    h, _ = learner.forward(x)
    P, s = m.params, learner.transfers
    u = h[1].clone().requires_grad_(True)                 # (32): one Euler step of -dC_2/du
    C2 = 0.5 * ((y - s[1](u @ P["W"][1].T + P["b"][1])) ** 2).sum()
    hat1 = h[1] - 0.3 * torch.autograd.grad(C2, u)[0]
    for i, hat in ((1, hat1), (2, y)):
        grad = _fd_local_gradient(P["W"][i - 1], P["b"][i - 1], s[i - 1], h[i - 1], hat)
        torch.testing.assert_close(new["W"][i - 1], P["W"][i - 1] - 0.7 * grad)


@pytest.mark.parametrize("init,first,other", [("gtp_earlier", 12 / 5, 8 / 3),
                                              ("gtp_later", 48 / 35, 16 / 11)])
def test_gtp_initialisation_variances(init, first, other):
    assert INITS[init] == pytest.approx((first, other))
    m = TwoPhaseDTP([400, 300, 300], dtype=D, transfer="sigmoid")
    W = learner_class("gtp")(m, init=init).params["W"]
    assert float(W[0].var()) * 400 == pytest.approx(first, rel=0.03)
    assert float(W[1].var()) * 300 == pytest.approx(other, rel=0.03)


def test_gtp_initialisation_constants_follow_from_eq_27():
    """Earlier version: <y>^2 + VAR(y); later revision: <y> + VAR(y) (its eq. 26 drops the
    square). Uniform input (1/2, 1/12), sigmoid units (1/2, 1/20), f'(0) = 1/4."""
    def var(mean, variance, squared):
        return (1 / 20) / ((1 / 16) * ((mean ** 2 if squared else mean) + variance))
    assert INITS["gtp_earlier"] == pytest.approx((var(0.5, 1 / 12, True), var(0.5, 1 / 20, True)))
    assert INITS["gtp_later"] == pytest.approx((var(0.5, 1 / 12, False), var(0.5, 1 / 20, False)))


def test_dtp_lee_penultimate_target_and_reconstruction_gradient():
    m = _model((4, 5, 5, 3), transfer="tanh")
    learner = learner_class("dtp_lee")(m, eta_hat=0.2, noise_std=0.0, loss="mse")
    x = _batch(4, 3)[0]
    y = torch.randn(8, 3, dtype=D, generator=torch.Generator().manual_seed(5))
    h, a = learner.forward(x)
    hat, _ = learner.targets(h, a, y)
    h2 = h[2].clone().requires_grad_(True)                # eq. 20 by autograd
    out = torch.tanh(h2 @ m.params["W"][2].T + m.params["b"][2])
    grad = torch.autograd.grad(0.5 * ((out - y) ** 2).sum(), h2)[0]
    torch.testing.assert_close(hat[2], h[2] - 0.2 * grad)


def test_slow_learning_limit_of_two_phase_dtp_is_dtp_ai():
    """The two-phase network (§6.6) with a tiny eta changes W like DTP-AI with the same
    eta_hat, up to O(mu): layer rates compensated by ((1-mu)/mu)^(L+1-i), change per unit
    time eta * T_learn. tanh network (smooth)."""
    def relative_errors(mu):
        m = TwoPhaseDTP([4, 5, 5, 3], mu=mu, eta=1e-6, eta_inv=0.0, compensate_decay=True,
                        dtype=D, seed=1, transfer="tanh")
        g = torch.Generator().manual_seed(0)
        x = 0.5 * torch.randn(8, 4, generator=g, dtype=D)
        y = 0.5 * torch.randn(8, 3, generator=g, dtype=D)
        T, eta_hat = 20.0, 0.01
        # the equilibrium rule itself (no transient correction): DTP-AI's discrete update
        run = present(m, x, Nudge(y, "mse", eta_hat), m.default_schedule(T_free=T, T_learn=T),
                      transient=False)
        dtp = learner_class("dtp_ai")(m, lr=1.0, eta_hat=eta_hat, loss="mse", lr_inv=0.0)
        new, _ = dtp.propose(x, y)
        out = []
        for i in range(3):
            d_model = (run.params["W"][i] - m.params["W"][i]) / (T * 1e-6)
            d_dtp = new["W"][i] - m.params["W"][i]
            out.append(float((d_model - d_dtp).norm() / d_dtp.norm()))
        return out
    coarse, fine = relative_errors(0.04), relative_errors(0.01)
    for layer in (1, 2):                                  # the top two layers: O(mu)
        assert fine[layer] < 2 * 0.01
        assert coarse[layer] / fine[layer] > 2.5
    assert fine[0] < 0.03                                 # the first layer
