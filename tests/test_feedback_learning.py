"""Feedback plasticity (6.26)/(6.37) driven by white-noise activity converges to the
regularised pseudo-inverse of Theorem 4.7 (thesis §4.3, appendix B.5).

Setting: identity transfer (so ``t_i = s_{i+1}^{-1}`` is exact), layer ``i = 1`` of width 6,
layer 2 of width 4, ``W = W_2`` (4 x 6, contracting), ``Q = Q_1`` (6 x 4). The activity of a
batch of M copies of the network (sharing synapses: the rule is the batch mean) is
``h_1 ~ N(0, sigma^2 I)``, ``h_2 = f_2(h_1) = W h_1``. The model's own ``plasticity`` gives
``dQ/dt = -eta_inv [ mean_b (Q h_2 - h_1) h_2^T + lambda Q ]`` (integrated with dopri5 on a
6-example batch with the same second moments, checked equal to the M-sample rate — with an
identity transfer the batch-mean rule depends on nothing else); integrated to convergence its
fixed point is ``Q = G W^T (W G W^T + lambda I)^-1`` with ``G`` the sample covariance, which
tends to Theorem 4.7's

    Q* = W^T (W W^T + lambda/sigma^2 I)^-1                                            (4.99)

as M grows. Tolerance: to first order ``Q - Q* = (I - Q* W) dG W^T A^-1`` with
``A = sigma^2 W W^T + lambda I`` and ``dG = G - sigma^2 I``; for Gaussian samples
``E ||P dG R||_F^2 = sigma^4/M [tr(P^T P) tr(R R^T) + tr(P^T P R R^T)]``, which gives the
expected RMS distance ``rms``; the test allows ``3 rms``. With coloured input (AR(1)
correlations, rho = 0.9, same variances) the rule converges to ``G W^T (W G W^T + lambda)^-1``
instead, far from (4.99) — the negative control.

Measured (M = 4000, sigma = 1, lambda = 0.1, both models): white distance 0.047 (rms 0.051,
tolerance 0.15; the start W^+ is 0.65 away); coloured distance 1.25; ||Q*||_F = 2.17.
"""
import functools
import math

import pytest
import torch
from torchdiffeq import odeint

from dendrite_sim.models import Mixture, TwoPhaseDTP

F64 = torch.float64
M, SIGMA, LAM, RHO = 4000, 1.0, 0.1, 0.9


@functools.lru_cache(maxsize=None)
def _learn_Q(cls, coloured, seed=0):
    model = cls([3, 6, 4], mu=0.1, feedback="learned", transfer="identity", eta=0.0,
                eta_inv=1.0, weight_decay=LAM, dtype=F64, seed=seed)
    W = model.W[1]                                                    # W_2, 4 x 6
    g = torch.Generator().manual_seed(seed + 100)
    xi = torch.randn(M, 6, generator=g, dtype=F64)
    cov = torch.tensor([[RHO ** abs(i - j) for j in range(6)] for i in range(6)], dtype=F64)
    h1 = SIGMA * (xi @ torch.linalg.cholesky(cov).T if coloured else xi)
    gates = {"teach": 0.0, "plastic_W": 0.0, "plastic_Q": 1.0, "trace": 0.0}   # sleep phase

    def batch_of(h1):
        """State and drive of copies of the network with layer-1 activity ``h1``."""
        h2 = h1 @ W.T                                                 # f_2(h_1), identity s
        state = torch.cat([h1, h2] * (2 if cls is TwoPhaseDTP else 1), dim=-1)  # z = h
        drive = model.drive(torch.zeros(h1.shape[0], 3, dtype=F64), None, lambda t: gates)
        return state, drive

    def rate(t, Q, batch):
        state, drive = batch
        return model.plasticity(t, state, drive, {**model.params, "Q": [Q]})["Q"][0]

    # The rule is linear in the batch's second moments (identity transfer): 6 pseudo-examples
    # with the sample covariance G of the M samples give the same batch-mean rate, checked
    # below on the full sample batch, and make the long integration cheap.
    G = h1.T @ h1 / M
    pseudo = batch_of(6 ** 0.5 * torch.linalg.cholesky(G).T)
    full = batch_of(h1)
    probe = model.Q[0] + 0.3
    torch.testing.assert_close(rate(0.0, probe, pseudo), rate(0.0, probe, full), rtol=1e-10,
                               atol=1e-12)
    slowest = float(torch.linalg.eigvalsh(W @ G @ W.T).min()) + LAM    # contraction rate
    t = torch.tensor([0.0, 25.0 / slowest], dtype=F64)                  # e^-25 of the start
    Q = odeint(lambda t, Q: rate(t, Q, pseudo), model.Q[0].clone(), t, rtol=1e-9,
               atol=1e-11)[-1]
    return W, Q, h1


def _theorem_47(W):
    A = W @ W.T + LAM / SIGMA ** 2 * torch.eye(W.shape[0], dtype=F64)
    return W.T @ torch.linalg.inv(A)


def _expected_rms(W, Qstar):
    P = torch.eye(W.shape[1], dtype=F64) - Qstar @ W
    R = W.T @ torch.linalg.inv(SIGMA ** 2 * W @ W.T + LAM * torch.eye(W.shape[0], dtype=F64))
    A, B = P.T @ P, R @ R.T
    return SIGMA ** 2 / math.sqrt(M) * math.sqrt(float(torch.trace(A) * torch.trace(B)
                                                       + torch.trace(A @ B)))


@pytest.mark.parametrize("cls", [Mixture, TwoPhaseDTP], ids=["mixture_6.26", "two_phase_6.37"])
def test_white_noise_drives_Q_to_theorem_47(cls):
    W, Q, _ = _learn_Q(cls, coloured=False)
    Qstar = _theorem_47(W)
    rms = _expected_rms(W, Qstar)
    dist = float((Q - Qstar).norm())
    start = float((torch.linalg.pinv(W) - Qstar).norm())            # Q starts at W^+
    assert dist < 3 * rms, (dist, rms)
    assert dist < 0.2 * start, (dist, start)


@pytest.mark.parametrize("cls", [Mixture, TwoPhaseDTP], ids=["mixture_6.26", "two_phase_6.37"])
def test_coloured_noise_does_not_reach_theorem_47(cls):
    W, Q_col, h1 = _learn_Q(cls, coloured=True)
    _, Q_white, _ = _learn_Q(cls, coloured=False)
    Qstar = _theorem_47(W)
    tol = 3 * _expected_rms(W, Qstar)
    far = float((Q_col - Qstar).norm())
    near = float((Q_white - Qstar).norm())
    assert far > 5 * tol and far > 10 * near, (far, near, tol)
    # ... it converges to the covariance-weighted solution instead (proof of Thm 4.7, B.31)
    G = h1.T @ h1 / M
    Q_G = G @ W.T @ torch.linalg.inv(W @ G @ W.T + LAM * torch.eye(4, dtype=F64))
    assert float((Q_col - Q_G).norm()) < 1e-6 * float(Q_G.norm())
