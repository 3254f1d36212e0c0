"""Claims of the thesis (Meulemans, ch. 4-5) checked on the discrete learners' helpers."""
import math

import pytest
import torch

from dendrite_sim.dynamics.transfer import Identity, LeakyReLU, Tanh
from dendrite_sim.families.pathways import robust_invertible
from dendrite_sim.learning.layered import (factorised_pinv, gauss_newton_layer_step,
                                           gauss_newton_targets, layer_forward,
                                           regularised_pinv, robust_inverse_update,
                                           white_noise_inverse_step)
from dendrite_sim.learning.learners import learner_class
from dendrite_sim.models import TwoPhaseDTP

D = torch.float64


def _gen(seed):
    return torch.Generator().manual_seed(seed)


def _randn(gen, *shape):
    return torch.randn(*shape, generator=gen, dtype=D)


def _cos(u, v):
    return float((u * v).sum() / (u.norm() * v.norm()))


def _mse(W, transfers, x, y):
    return float(0.5 * ((layer_forward(W, [None] * len(W), transfers, x)[0][-1] - y) ** 2)
                 .sum(-1).mean())


# -- §5.1.1 toy example, linear ------------------------------------------------------------
def _toy_model():
    """1 -> 2 -> 2 linear network; W_2 ill-conditioned (singular values 3 and 0.5)."""
    m = TwoPhaseDTP([1, 2, 2], transfer="identity", feedback="learned", dtype=D, seed=0)
    rot = torch.tensor([[math.cos(0.6), -math.sin(0.6)], [math.sin(0.6), math.cos(0.6)]],
                       dtype=D)
    m.params["W"][1] = rot @ torch.diag(torch.tensor([3.0, 0.5], dtype=D)) @ rot.T
    m.params["W"][0] = torch.tensor([[1.0], [-1.0]], dtype=D)
    return m


def test_toy_linear_tp_step_is_gauss_newton_direction_and_gn_solves_in_one_step():
    m = _toy_model()
    W_star = torch.tensor([[-0.5], [0.8]], dtype=D)
    x = _randn(_gen(1), 32, 1)
    y = x @ W_star.T @ m.params["W"][1].T
    transfers = [Identity(), Identity()]
    tp = learner_class("tp_exact")(m, lr=1.0, eta_hat=0.1, loss="mse")
    new, _ = tp.propose(x, y)
    dW_tp = new["W"][0] - m.params["W"][0]
    dW_gn = gauss_newton_layer_step(m.params["W"], m.params["b"], transfers, x, y, layer=1)
    # (5.11): the GN step is W* - W_1 and reaches the optimum at once
    torch.testing.assert_close(dW_gn, W_star - m.params["W"][0], rtol=1e-9, atol=1e-12)
    assert _mse([m.params["W"][0] + dW_gn, m.params["W"][1]], transfers, x, y) < 1e-20
    # (5.9): the TP step points along it, scaled by eta_hat E[h0^2]
    assert _cos(dW_tp, dW_gn) > 1 - 1e-9
    torch.testing.assert_close(dW_tp, 0.1 * (x ** 2).mean() * dW_gn)


def test_toy_linear_backprop_zigzags():
    """(5.7, 5.12): gradient steps weigh the directions by sigma_i^2 of W_2: with eta 0.3 and
    sigma_max = 3 (eta sigma^2 E[h0^2] ~ 2.7 > 2) the stiff direction flips at every step."""
    m = _toy_model()
    W_star = torch.tensor([[-0.5], [0.8]], dtype=D)
    x = _randn(_gen(1), 32, 1)
    y = x @ W_star.T @ m.params["W"][1].T
    bp = learner_class("backprop")(m, lr=0.3, loss="mse")
    bp.runaway = math.inf                     # the divergence is what is studied
    steps, losses = [], [bp.loss(x, y)]
    for _ in range(6):
        before = bp.params["W"][0].clone()
        bp.step(x, y)
        steps.append(bp.params["W"][0] - before)
        losses.append(bp.loss(x, y))
    turns = [_cos(a, b) for a, b in zip(steps, steps[1:])]
    assert min(turns) < -0.5                  # consecutive steps point against each other
    assert losses[1] > 1e-3 * losses[0]       # not at the optimum after one step


# -- Theorem 4.3 ----------------------------------------------------------------------------
def test_exact_inverse_targets_are_block_diagonal_gauss_newton_to_second_order():
    m = TwoPhaseDTP([4, 4, 4, 4], transfer="tanh", feedback="exact", dtype=D, seed=3)
    tp = learner_class("tp_exact")(m, loss="mse")
    x = 0.5 * _randn(_gen(2), 6, 4)
    target = 0.3 * _randn(_gen(3), 6, 4)
    h, _ = tp.forward(x)
    e_L = h[-1] - target
    errors = []
    for eta_hat in (1e-2, 5e-3, 2.5e-3):
        tp.eta_hat = eta_hat
        hat = tp.targets(h, target)
        gn = gauss_newton_targets(m.params["W"], m.params["b"], tp.transfers, x, e_L, eta_hat)
        errors.append(max(float((hat[i] - gn[i - 1]).abs().max()) for i in (1, 2)))
        # the first-order part agrees: the error is small against the step itself
        assert errors[-1] < 0.1 * eta_hat * float((gn[0] - h[1]).abs().max() / eta_hat)
    ratios = [a / b for a, b in zip(errors, errors[1:])]
    for r in ratios:                           # halving eta_hat quarters the error: O(eta_hat^2)
        assert 3.6 < r < 4.4, ratios


# -- Lemma 4.8 ------------------------------------------------------------------------------
def _factorisation_error(sizes, seed):
    gen = _gen(seed)
    W = [robust_invertible(n_out, n_in, gen, 0.4) for n_in, n_out in zip(sizes[:-1], sizes[1:])]
    transfers = [LeakyReLU(0.2)] * len(W)
    x = _randn(gen, 8, sizes[0])
    h, a = layer_forward(W, [None] * len(W), transfers, x)
    J = [s.derivative(ak)[:, :, None] * Wk for Wk, ak, s in zip(W, a, transfers)]
    J1 = J[2] @ J[1]                                           # dh_3/dh_1, (B, n_3, n_1)
    e = _randn(gen, 8, sizes[-1], 1)
    exact = torch.linalg.pinv(J1) @ e
    factored = factorised_pinv(W, a, transfers, 1) @ e
    return float(((exact - factored).norm(dim=1) / exact.norm(dim=1)).max())


@pytest.mark.parametrize("hidden", [(5, 5, 5), (7, 5, 5)])
def test_pseudo_inverse_factorises_when_lemma_4_8_holds(hidden):
    for seed in range(5):
        assert _factorisation_error((4,) + hidden, seed) < 1e-8


def test_pseudo_inverse_does_not_factorise_with_a_smaller_output_layer():
    errors = [_factorisation_error((4, 5, 5, 3), seed) for seed in range(10)]
    assert sorted(errors)[5] > 0.05, errors     # median: far from factorisable (Fig. 5.12c)


# -- §5.2.1: learning the (pseudo-)inverse --------------------------------------------------
def _learn_inverse(n1, n2, inputs, weight_decay=0.0, iterations=2000, lr=0.05, seed=0):
    """Alg. A.8 on ``W`` (n2 x n1) fixed, leaky ReLU slope 0.35 (5.42, 5.43); ``inputs(gen)``
    draws a batch of h_1. Returns ``(W, Q, mean reconstruction error of the last batch)``."""
    gen = _gen(seed)
    W = robust_invertible(n2, n1, gen, 0.4)
    Q = robust_invertible(n1, n2, gen, 0.4)
    s = LeakyReLU(0.35)
    for k in range(iterations):
        rate = lr * (1 - 0.9 * k / iterations)
        Q = white_noise_inverse_step(Q, W, None, s, inputs(gen), rate, weight_decay)
    h = inputs(gen)
    recon = (s.inverse(s(h @ W.T)) @ Q.T - h).norm(dim=1).mean()
    return W, Q, float(recon)


def _rel(a, b):
    return float((a - b).norm() / b.norm())


def test_equal_layers_learn_the_inverse_with_white_or_full_rank_input():
    white = lambda g: _randn(g, 16, 5)
    C = torch.eye(5, dtype=D) + 0.3 * _randn(_gen(11), 5, 5)    # full rank, not white
    coloured = lambda g: _randn(g, 16, 5) @ C.T
    for inputs in (white, coloured):
        W, Q, recon = _learn_inverse(5, 5, inputs, iterations=5000)
        assert _rel(Q, torch.linalg.inv(W)) < 0.02
        assert recon < 0.02


def test_equal_layers_rank_deficient_input_control_reconstructs_but_misses_the_inverse():
    C = _randn(_gen(12), 5, 2)
    W, Q, recon = _learn_inverse(5, 5, lambda g: _randn(g, 16, 2) @ C.T, lr=0.02)
    assert recon < 0.02                              # Linv -> 0 (Fig. 5.10a) ...
    assert _rel(Q, torch.linalg.inv(W)) > 0.2        # ... but Q is not W^{-1} (Fig. 5.9a)


def test_contracting_layers_learn_the_pseudo_inverse_with_white_input_only():
    W, Q, recon = _learn_inverse(5, 3, lambda g: _randn(g, 16, 5))
    assert _rel(Q, torch.linalg.pinv(W)) < 0.05      # Theorem 4.6, batch 16 (Fig. 5.9b)
    assert recon > 0.5                               # no perfect inverse exists (Fig. 5.10b)
    C = _randn(_gen(13), 5, 5)
    W, Q, _ = _learn_inverse(5, 3, lambda g: _randn(g, 16, 5) @ C.T, lr=0.01)
    assert _rel(Q, torch.linalg.pinv(W)) > 0.2       # coloured input: not W^+


def test_expanding_layers_converge_to_theorem_4_7_with_weight_decay():
    white = lambda g: _randn(g, 16, 3)
    W, Q, _ = _learn_inverse(3, 5, white, weight_decay=0.2)
    assert _rel(Q, regularised_pinv(W, 0.2)) < 0.03  # W^T (W W^T + lambda I)^{-1}
    assert _rel(Q, torch.linalg.pinv(W)) > 0.02      # not W^+ itself for lambda > 0
    W, Q, recon = _learn_inverse(3, 5, white, weight_decay=0.0)
    assert recon < 0.02                              # a left inverse (Fig. 5.10c) ...
    assert _rel(Q, torch.linalg.pinv(W)) > 0.2       # ... but not W^+ (Fig. 5.9c)


# -- robust Sherman-Morrison ----------------------------------------------------------------
@pytest.mark.parametrize("rank", [1, 3])
def test_robust_inverse_update_keeps_the_exact_inverse(rank):
    gen = _gen(5)
    W = robust_invertible(6, 6, gen, 0.4)
    U, V = 0.05 * _randn(gen, 6, rank), _randn(gen, 6, rank)
    W1, W1_inv, beta = robust_inverse_update(W, torch.linalg.inv(W), U, V, eps=0.5)
    assert beta == 1.0
    torch.testing.assert_close(W1, W + U @ V.T)
    torch.testing.assert_close(W1_inv, torch.linalg.inv(W1))


def test_robust_sherman_morrison_scales_a_step_toward_singularity():
    """Alg. 4.1: |1 + d| < eps -> beta = 1/(eps - d) < 1 and W^{-1} stays exact (4.79-4.80)."""
    W = torch.eye(3, dtype=D)
    u = torch.tensor([[-0.9], [0.0], [0.0]], dtype=D)        # d = -0.9: 1 + d = 0.1 < 0.5
    v = torch.tensor([[1.0], [0.0], [0.0]], dtype=D)
    W1, W1_inv, beta = robust_inverse_update(W, W.clone(), u, v, eps=0.5)
    assert beta == pytest.approx(1 / 1.4)
    torch.testing.assert_close(W1_inv, torch.linalg.inv(W1))
    assert float(torch.linalg.svdvals(W1)[-1]) > 0.3


# -- Theorem 4.1 is not asserted: its claim fails -------------------------------------------
def _tp_bp_cosine(seed, eta_hat=1e-7):
    """cos(Delta W^tp_1, Delta W^bp_1) for one sample at eta_hat -> 0 on a random leaky-ReLU
    network with exact inverses (the setting of Theorem 4.1)."""
    m = TwoPhaseDTP([3, 3, 3, 3], transfer="leaky_relu", slope=0.1, feedback="exact",
                    dtype=D, seed=seed)
    gen = _gen(100 + seed)
    x, y = _randn(gen, 1, 3), _randn(gen, 1, 3)
    tp = learner_class("tp_exact")(m, lr=1.0, eta_hat=eta_hat, loss="mse")
    bp = learner_class("backprop")(m, lr=1.0, loss="mse")
    new_tp, _ = tp.propose(x, y)
    new_bp, _ = bp.propose(x, y)
    return _cos(new_tp["W"][0] - m.params["W"][0], new_bp["W"][0] - m.params["W"][0])


def test_theorem_4_1_counterexample_tp_update_is_not_always_a_descent_direction():
    """Theorem 4.1 claims 0 < cos(alpha) <= 1 per sample; its proof (Appendix B) is wrong.
    Random leaky-ReLU networks give negative cosines in a sizeable fraction of cases."""
    cosines = [_tp_bp_cosine(seed) for seed in range(10)]
    negative = [c for c in cosines if c < 0]
    assert len(negative) >= 1, cosines
    assert min(cosines) < -0.05                # clearly an ascent direction, not rounding
