"""The fast paths of coupled learning (issue 18): fixed-step Runge-Kutta stages kept without a
buffer, the fused feedback-rate product of (6.26)/(6.37), and coupled presentations run in
inference mode. Each against an independent computation."""
import math

import numpy as np
import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.dynamics import rk
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.learning.presentation import present
from dendrite_sim.learning.schedule import Schedule
from dendrite_sim.models import TwoPhaseDTP

F64 = torch.float64


def _numpy_rk(f, y0, t0, t1, n, tab):
    """The explicit Runge-Kutta recursion written out in numpy from the tableau's numbers."""
    y, h = np.array(y0, dtype=float), (t1 - t0) / n
    for k in range(n):
        t, K = t0 + k * h, []
        for i in range(tab.stages):
            yi = y + h * sum(a * Kj for a, Kj in zip(tab.a[i], K))
            K.append(f(t + tab.c[i] * h, yi))
        y = y + h * sum(b * Kj for b, Kj in zip(tab.b, K))
    return y


@pytest.mark.parametrize("name", ["heun3", "rk4", "midpoint", "euler", "dopri5", "bosh3"])
def test_unbuffered_fixed_steps_are_the_runge_kutta_recursion(name):
    """Fixed steps (stages uncopied, one fused add per nonzero coefficient, FSAL reused) give
    the tableau's recursion to round-off, on a nonlinear non-autonomous field."""
    tab = rk.TABLEAUX[name]
    M = np.array([[-0.5, 1.0, 0.2], [-1.0, -0.3, 0.0], [0.1, 0.4, -0.8]])

    def f_np(t, y):
        return np.tanh(y) @ M.T * math.cos(t) - 0.1 * y

    def f_torch(t, y):
        return torch.tanh(y) @ torch.from_numpy(M).T * math.cos(t) - 0.1 * y

    y0 = np.array([[0.3, -0.2, 0.5], [1.0, 0.1, -0.4]])
    sol = rk.solve(f_torch, torch.from_numpy(y0), torch.tensor([0.0, 1.5], dtype=F64), tab,
                   step_size=0.1)
    expected = _numpy_rk(f_np, y0, 0.0, 1.5, 15, tab)
    np.testing.assert_allclose(sol.ys[-1].numpy(), expected, rtol=0, atol=1e-13)
    assert sol.steps == 15
    assert sol.nfev == 15 * tab.stages - (14 if tab.fsal else 0)


@pytest.mark.parametrize("decay", [0.0, 0.3])
def test_fused_feedback_rate_is_the_scaled_gradient_plus_decay(decay):
    """``feedback_gradient(..., scale, decay=(Q, c))`` is ``scale`` times the autograd gradient
    of ``1/2 sum ||g_i(h_{i+1}) - h_i||^2`` w.r.t. ``Q_i`` plus ``c Q_i`` (6.37), with plain
    numbers (one addmm) and with a tensor scale (the general path)."""
    model = TwoPhaseDTP([3, 5, 4, 2], mu=0.2, bias=True, dtype=F64, seed=3)
    P = model.prepare(model.params)
    gen = torch.Generator().manual_seed(0)
    y = torch.rand(6, 4, dtype=F64, generator=gen) - 0.3        # h_2
    h = torch.randn(6, 5, dtype=F64, generator=gen)             # h_1
    Q = P["Q"][0].clone().requires_grad_(True)
    loss = 0.5 * (model.pathways.feedback_map(1, y, {**P, "Q": [Q, P["Q"][1]]}) - h).pow(2).sum()
    (grad,) = torch.autograd.grad(loss, Q)
    expected = -0.7 * grad + decay * P["Q"][0]
    for scale in (-0.7, torch.tensor(-0.7, dtype=F64)):
        got = model.pathways.feedback_gradient(1, y, h, P, scale=scale,
                                               decay=(P["Q"][0], decay))
        torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-13)
    torch.testing.assert_close(model.pathways.feedback_gradient(1, y, h, P), grad,
                               rtol=1e-12, atol=1e-13)


def test_coupled_presentation_in_inference_mode_matches_the_recorded_one():
    """Coupled presentations with nothing that records gradients run in inference mode; the
    result equals the one with a parameter that requires grad (run outside it) to round-off,
    and its tensors are ordinary: usable in autograd and modifiable in place."""
    model = TwoPhaseDTP([3, 4, 4, 2], mu=0.1, bias=True, dtype=F64, seed=2, eta=0.05,
                        eta_inv=0.05)
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(3, 3, dtype=F64, generator=gen)
    target = Nudge(torch.rand(3, 2, dtype=F64, generator=gen), "mse", 0.5)
    sched = Schedule.two_phase(5.0, 4.0)
    fast = present(model, x, target, sched, mode="coupled", method="heun3", step_size=0.5)
    recorded_params = {n: [None if p is None else p.clone().requires_grad_(True) for p in v]
                       for n, v in model.params.items()}
    slow = present(model, x, target, sched, mode="coupled", params=recorded_params,
                   method="heun3", step_size=0.5)
    for name in ("W", "b", "Q"):
        for p, q, p0 in zip(fast.params[name], slow.params[name], model.params[name]):
            assert not p.is_inference()
            assert float((p - p0).abs().max()) > 1e-6            # it learned
            torch.testing.assert_close(p, q.detach(), rtol=0, atol=1e-14)
    for state in fast.phase_states.values():
        assert not state.is_inference()
    fast.params["W"][0].add_(1.0)           # inference tensors refuse both outside the mode
    leaf = fast.params["W"][1].requires_grad_(True)
    (leaf.sum() * 2).backward()
    assert torch.equal(leaf.grad, torch.full_like(leaf, 2.0))


def test_gradients_through_a_coupled_integration_match_finite_differences():
    """Where autograd records (an input that requires grad), the integrated parameters are
    new tensors at every evaluation, not the reused buffer: the gradient of the learned
    weights with respect to the input matches central finite differences."""
    model = TwoPhaseDTP([3, 4, 2], mu=0.2, bias=True, dtype=F64, seed=4, eta=0.3,
                        eta_inv=0.3)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(2, 3, dtype=F64, generator=gen)
    target = Nudge(torch.rand(2, 2, dtype=F64, generator=gen), "mse", 0.5)
    probe = torch.randn(4, 3, dtype=F64, generator=gen)
    t = torch.tensor([0.0, 3.0], dtype=F64)

    def learned(inp):
        traj = ds.simulate(model, inp, t, target, method="rk4", step_size=0.25, plastic=True)
        return (traj.params["W"][0] * probe).sum()

    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(learned(xg), xg)
    eps, fd = 1e-6, torch.zeros_like(x)
    for idx in np.ndindex(*x.shape):
        d = torch.zeros_like(x)
        d[idx] = eps
        fd[idx] = (learned(x + d) - learned(x - d)) / (2 * eps)
    assert float(grad.abs().max()) > 1e-4
    torch.testing.assert_close(grad, fd, rtol=1e-6, atol=1e-9)
