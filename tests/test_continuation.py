"""Continuation of mixture-model equilibria in mu and in the feedback gain c (SPEC §3, §6.7).

Independent references:

* the spectrum recomputed at a ``fixed_point`` solved from scratch at each value;
* ``numpy.linalg.eigvals`` of the Jacobian written out by hand from (6.40)-(6.42): blocks
  ``-I`` on the diagonal (``-(1-mu) I`` for the top layer when free, since ``g_L = h_L``),
  ``(1-mu) D_i W_i`` below and ``c mu W_{i+1}^{-1} D'_{i+1}^{-1}`` above, with ``D_i`` the slope
  of ``s`` at ``W_i h_{i-1}`` and ``D'_{i+1}`` its slope at ``s^{-1}(h_{i+1})``;
* the reduced matrix: where ``D = D'`` the Jacobian is similar (block-diagonal scaling) to
  ``T ⊗ I`` with ``T`` the L x L tridiagonal matrix with ``-1`` on the diagonal (last entry
  ``-(1-mu)`` when free), ``1`` below and ``p = c mu (1-mu)`` above. For L = 3, free,
  ``det T = -(1-mu) + p (2-mu)``, so stability is lost at ``c* = 1 / (mu (2-mu))``.
"""
import importlib
import numpy as np
import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.continuation import Continuation, continuation, with_parameter
from dendrite_sim.models import Mixture

F64 = torch.float64
SIZES = [4, 4, 4, 4]
SLOPE = 0.1
# fixed_point options that keep the sweeps past the loss of stability cheap
FAST = dict(max_iter=20, settle_time=2.0)
# points with max_real below -MARGIN must be found by fixed_point
MARGIN = 0.05


def make(transfer="leaky_relu", mu=0.1):
    return Mixture(SIZES, mu=mu, transfer=transfer, slope=SLOPE, dtype=F64, seed=1)


@pytest.fixture(scope="module")
def x():
    return torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(0))


def slope_np(transfer, a):
    """``s'(a)``; for the inverse pathway ``s'(s^{-1}(y))``, see :func:`inverse_slope_np`."""
    if transfer == "identity":
        return np.ones_like(a)
    if transfer == "tanh":
        return 1.0 - np.tanh(a) ** 2
    return np.where(a >= 0, 1.0, SLOPE)


def inverse_slope_np(transfer, y):
    """``s'(s^{-1}(y))`` (leaky ReLU: ``s^{-1}(y)`` has the sign of ``y``)."""
    return 1.0 - y ** 2 if transfer == "tanh" else slope_np(transfer, y)


def analytic_jacobian(model, x, h, mu, c, transfer, top=1.0):
    """Numpy Jacobian of (6.1) at the state ``h`` (N,) of one example (tau = 1); ``top`` is
    ``d g_L / d h_L``: 1 free, 0 clamp, ``1 - eta_hat`` nudge (mse)."""
    W = [w.numpy() for w in model.W]
    n, L = W[0].shape[0], len(W)
    layers = [x] + [h[k * n:(k + 1) * n] for k in range(L)]
    J = np.zeros((n * L, n * L))
    for i in range(1, L + 1):
        r = slice((i - 1) * n, i * n)
        J[r, r] = (-1.0 + (mu * top if i == L else 0.0)) * np.eye(n)
        if i >= 2:
            d = slope_np(transfer, W[i - 1] @ layers[i - 1])
            J[r, (i - 2) * n:(i - 1) * n] = (1 - mu) * d[:, None] * W[i - 1]
        if i < L:
            d_inv = inverse_slope_np(transfer, layers[i + 1])
            J[r, i * n:(i + 1) * n] = c * mu * np.linalg.solve(W[i], np.diag(1.0 / d_inv))
    return J


def max_real_np(J):
    return np.linalg.eigvals(J).real.max()


def reduced_max_real(mu, c, L=3, free=True):
    T = -np.eye(L) + np.diag(np.ones(L - 1), -1) + c * mu * (1 - mu) * np.diag(np.ones(L - 1), 1)
    if free:
        T[-1, -1] = -(1 - mu)
    return max_real_np(T)


def assert_tracked_below(cont, below):
    """Below the critical value every point with a clear stability margin is a converged,
    stable equilibrium (close to the crossing the solver may legitimately struggle: such
    points must then be reported as not converged, hence not stable); above it no point is
    stable."""
    clear = torch.as_tensor(below)[:, None] & (cont.max_real < -MARGIN)
    assert cont.converged[clear].all() and cont.stable[clear].all()
    assert torch.equal(cont.stable, cont.converged & (cont.max_real < 0))
    assert not cont.stable[~torch.as_tensor(below)].any()


def critical_gain_by_bisection(max_real_of_c, lo, hi, tol=1e-12):
    assert max_real_of_c(lo) < 0 < max_real_of_c(hi)
    while hi - lo > tol:
        mid = 0.5 * (lo + hi)
        lo, hi = (mid, hi) if max_real_of_c(mid) < 0 else (lo, mid)
    return 0.5 * (lo + hi)


# ----------------------------------------------------------------------------------------------
# mu sweep: the §6.7 claim
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("teach, transfer", [("free", "leaky_relu"), ("clamp", "tanh"),
                                             ("nudge", "tanh")])
def test_mu_sweep_is_stable_and_matches_independent_spectra(x, teach, transfer):
    model = make(transfer)
    out = model.initial_state(model.drive(x), model.prepare(model.params))[:, -4:]
    target, top = {"free": (None, 1.0), "clamp": (0.8 * out + 0.1, 0.0),
                   "nudge": (ds.Nudge(0.8 * out + 0.1, eta_hat=0.5), 0.5)}[teach]
    mus = np.linspace(0.01, 0.49, 9)
    cont = continuation(model, x, "mu", mus, target)

    assert isinstance(cont, Continuation) and cont.parameter == "mu"
    V, B, N = len(mus), x.shape[0], 12
    assert cont.values.shape == (V,) and cont.states.shape == (V, B, N)
    assert cont.eigenvalues.shape == (V, B, N) and cont.eigenvalues.is_complex()
    for name in ("max_real", "stable", "converged", "residual"):
        assert getattr(cont, name).shape == (V, B)
    assert cont.converged.all() and cont.stable.all()          # §6.7: stable on (0, 0.5)
    assert (cont.max_real < 0).all() and (cont.residual <= 1e-10).all()
    assert torch.isnan(cont.loss_of_stability).all()
    assert torch.isnan(cont.first_unconverged).all()
    assert "none within the sweep" in cont.summary()

    for k, mu in enumerate(mus):
        m = model.replace(mu=float(mu))
        eq = ds.fixed_point(m, x, target)                       # from scratch, not warm
        spec = ds.spectrum(m, x, eq, target)
        torch.testing.assert_close(cont.states[k], eq.y, rtol=0, atol=1e-9)
        torch.testing.assert_close(cont.max_real[k], spec.max_real, rtol=0, atol=1e-9)
        for b in range(B):
            J = analytic_jacobian(m, x[b].numpy(), eq.y[b].numpy(), mu, 1.0, transfer, top)
            assert abs(max_real_np(J) - float(cont.max_real[k, b])) < 1e-9
        if teach == "free":  # equilibrium = forward pass, D = D': the reduced 3x3 matrix
            assert np.allclose(cont.max_real[k].numpy(), reduced_max_real(mu, 1.0), atol=1e-9)


def test_decreasing_sweep_and_callable_parameter(x):
    model = make()
    taus = [4.0, 2.0, 1.0, 0.5]
    cont = continuation(model, x, lambda m, v: m.replace(tau=v), taus)
    assert cont.converged.all()
    # the field is (...)/tau: eigenvalues scale as 1/tau, the equilibrium does not move
    scaled = cont.max_real * cont.values[:, None]
    torch.testing.assert_close(scaled, scaled[:1].expand_as(scaled), rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(cont.states, cont.states[:1].expand_as(cont.states))
    assert with_parameter(model, "mu", 0.3).mu == 0.3 and model.mu == 0.1


# ----------------------------------------------------------------------------------------------
# feedback-gain sweep: stability is lost at c* = 1 / (mu (2 - mu))
# ----------------------------------------------------------------------------------------------
GAINS = [0.5, 2.0, 4.0, 5.0, 5.5, 8.0]


def test_gain_sweep_loses_stability_identity_transfer(x):
    """Linear network: the Jacobian does not depend on the state, so the crossing is exact
    whether or not the (unstable) equilibria beyond it are found."""
    mu = 0.1
    model = make("identity", mu)
    cont = continuation(model, x, "feedback_gain", GAINS, **FAST)
    assert model.feedback_gain == 1.0                           # the model is not modified

    def J_of(c):
        return analytic_jacobian(model, x[0].numpy(), np.zeros(12), mu, c, "identity")

    c_star = critical_gain_by_bisection(lambda c: max_real_np(J_of(c)), 1.0, 20.0)
    assert abs(c_star - 1.0 / (mu * (2 - mu))) < 1e-9           # 5.2631578...
    assert abs(c_star - critical_gain_by_bisection(
        lambda c: reduced_max_real(mu, c), 1.0, 20.0)) < 1e-9
    for k, c in enumerate(GAINS):
        assert np.allclose(cont.max_real[k].numpy(), max_real_np(J_of(c)), atol=1e-9)

    values = cont.values.numpy()
    below = values < c_star
    assert_tracked_below(cont, below)
    assert (cont.max_real[~below] > 0).all()
    loss = cont.loss_of_stability
    assert loss.shape == (3,)
    # linear interpolation of max_real over the bracket [5, 5.5]: within 0.01 of c*
    assert torch.all((loss - c_star).abs() < 0.01), (loss, c_star)
    assert "loss of stability in 3/3" in cont.summary()
    # the crossing is certified only where fixed_point found the unstable equilibrium
    k = int(np.searchsorted(values, c_star)) - 1
    expect = cont.converged[k] & cont.converged[k + 1]
    assert torch.equal(cont.crossing_converged, expect)


def test_gain_sweep_default_leaky_relu_model(x):
    """The thesis model (leaky ReLU): stable below c*, never stable above it; at every
    converged point max_real matches the hand-written Jacobian, and D = D' so the reduced
    matrix gives it too."""
    mu = 0.1
    model = make("leaky_relu", mu)
    cont = continuation(model, x, "feedback_gain", GAINS, **FAST)
    c_star = 1.0 / (mu * (2 - mu))
    values = cont.values.numpy()
    below = values < c_star
    assert_tracked_below(cont, below)
    for k, c in enumerate(GAINS):
        for b in range(x.shape[0]):
            if not cont.converged[k, b]:
                continue
            h = cont.states[k, b].numpy()
            J = analytic_jacobian(model, x[b].numpy(), h, mu, c, "leaky_relu")
            assert abs(max_real_np(J) - float(cont.max_real[k, b])) < 1e-8
            if c < c_star:
                assert abs(reduced_max_real(mu, c) - float(cont.max_real[k, b])) < 1e-8
    # the max real part rises monotonically toward 0 below c*
    assert (torch.diff(cont.max_real[below], dim=0) > 0).all()
    k = int(np.searchsorted(values, c_star)) - 1
    loss = cont.loss_of_stability
    assert torch.all((loss >= values[k]) & (loss <= values[k + 1]))
    # the equilibrium was tracked: its size grows as c -> c* (it diverges there)
    clear = below & (cont.max_real < -MARGIN).all(1).numpy()
    size = cont.states[clear].abs().amax(-1)
    assert (torch.diff(size, dim=0) > 0).all()


def test_mu_sweep_with_large_gain_loses_stability(x):
    """With c = 20 stability is lost in mu at mu* = 1 - sqrt(1 - 1/c) (mu (2-mu) = 1/c)."""
    c = 20.0
    model = with_parameter(make("identity"), "feedback_gain", c)
    mus = [0.01, 0.02, 0.03, 0.04]
    cont = continuation(model, x, "mu", mus, **FAST)
    mu_star = 1 - np.sqrt(1 - 1 / c)
    assert abs(mu_star - critical_gain_by_bisection(
        lambda mu: reduced_max_real(mu, c), 0.01, 0.04)) < 1e-9
    assert torch.all((cont.loss_of_stability - mu_star).abs() < 1e-3)
    assert_tracked_below(cont, (cont.values < mu_star).numpy())


# ----------------------------------------------------------------------------------------------
# failure reporting and validation
# ----------------------------------------------------------------------------------------------
def test_nonconvergence_is_reported_not_hidden(x):
    # one Anderson step from a clamped state (not the forward pass, where the residual can be
    # exactly 0.0, nor dense Newton, which can land on it): 1e-300 is out of reach
    clamp = torch.full((x.shape[0], SIZES[-1]), 0.5, dtype=F64)
    cont = continuation(make("tanh"), x, "mu", [0.1, 0.2], clamp, tol=1e-300, max_iter=1,
                        method="anderson", settle_time=1.0)
    assert not cont.converged.any() and not cont.stable.any()
    assert (cont.max_real < 0).all()                    # the spectrum is still reported
    assert torch.all(cont.first_unconverged == 0.1)
    assert "NOT converged at 0.1, 0.2" in cont.summary()


def test_numerical_failure_marks_value_and_warm_start_recovers(x, monkeypatch):
    mod = importlib.import_module("dendrite_sim.continuation")
    calls = []

    def flaky(model, *args, **kwargs):
        calls.append(kwargs["y0"].clone())
        if len(calls) == 2:
            raise ds.NumericalError("simulated failure")
        return ds.fixed_point(model, *args, **kwargs)

    monkeypatch.setattr(mod, "fixed_point", flaky)
    cont = continuation(make(), x, "mu", [0.1, 0.2, 0.3])
    assert cont.converged.tolist() == [[True] * 3, [False] * 3, [True] * 3]
    assert torch.isnan(cont.states[1]).all() and torch.isnan(cont.max_real[1]).all()
    assert torch.isinf(cont.residual[1]).all()
    torch.testing.assert_close(calls[2], cont.states[0])  # restarted from the last good one
    assert torch.isnan(cont.loss_of_stability).all()


@pytest.mark.parametrize("values, match", [
    ([0.1], "at least 2"),
    ([[0.1, 0.2], [0.3, 0.4]], "1-D"),
    ([0.1, float("nan")], "finite"),
    ([0.1, float("inf")], "finite"),
    ([0.1, 0.3, 0.2], "monotone"),
    ([0.1, 0.1, 0.2], "monotone"),
    (["a", "b"], "real numbers"),
])
def test_invalid_values(x, values, match):
    with pytest.raises(ValueError, match=match):
        continuation(make(), x, "mu", values)


@pytest.mark.parametrize("parameter", ["nope", "W", "sizes", "params", 3])
def test_unknown_parameter_is_named(x, parameter):
    with pytest.raises(ValueError, match=repr(parameter) if isinstance(parameter, str)
                       else "parameter"):
        continuation(make(), x, parameter, [0.1, 0.2])


def test_value_outside_model_range_raises_model_error(x):
    with pytest.raises(ValueError, match="mu must lie in"):
        continuation(make(), x, "mu", [0.3, 0.5])
    with pytest.raises(ValueError, match="tau must lie in"):
        continuation(make(), x, "tau", [1.0, -1.0])
