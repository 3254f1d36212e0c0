"""Exponential Runge-Kutta methods (``etd1``, ``etdrk2``, ``etdrk4``; dendrite_sim/dynamics/rk.py)
and the model contract's ``linear_decay`` they integrate exactly.

References are independent of the code under test: ``phi_j`` in 50-digit decimal arithmetic,
a linear system's solution by scipy's matrix exponential, the Jacobian's diagonal by forward-mode
autodiff, coupled weight changes of tight dopri5.
"""
import decimal
import math

import pytest
import torch
from scipy.linalg import expm

import dendrite_sim as ds
from dendrite_sim import Nudge
from dendrite_sim.dynamics import rk
from dendrite_sim.dynamics.integrators import Integrator
from dendrite_sim.learning import present
from dendrite_sim.learning.schedule import Schedule
from dendrite_sim.models import CDTP, Mixture, Multiplexing, TwoPhaseDTP

F64 = torch.float64
METHODS = {"etd1": 1, "etdrk2": 2, "etdrk4": 4}


def phi_decimal(j: int, z: float) -> float:
    """``phi_j(z) = (e^z - sum_{n<j} z^n / n!) / z^j`` with 50 significant digits."""
    decimal.getcontext().prec = 50
    zd = decimal.Decimal(z)
    if z == 0:
        return 1.0 / math.factorial(j)
    head = sum(zd ** n / math.factorial(n) for n in range(j))
    return float((zd.exp() - head) / zd ** j)


@pytest.mark.parametrize("j", [0, 1, 2, 3])
def test_phi_functions_against_fifty_digit_arithmetic(j):
    z = [0.0, -1e-9, 3e-7, -0.01, -0.5, 0.999, -1.0, -1.7, -3.0, -12.5, -40.0, 2.0]
    got = rk.phi(j, torch.tensor(z, dtype=F64))
    want = torch.tensor([phi_decimal(j, v) for v in z], dtype=F64)
    torch.testing.assert_close(got, want, rtol=1e-14, atol=1e-300)


# a linear system y' = (-K + A) y with a stiff diagonal K (rates up to 50) and a weak coupling
# A; the exact solution is expm; K's last rate is 0 (a column with no linear decay)
K = torch.tensor([1.0, 3.0, 50.0, 0.0], dtype=F64)
A = 0.4 * torch.tensor([[0.0, 1.0, -0.5, 0.2], [-1.0, 0.0, 0.3, 0.0],
                        [0.5, -0.3, 0.0, 0.4], [0.1, 0.6, -0.4, 0.0]], dtype=F64)
Y0 = torch.tensor([[1.0, -0.5, 0.3, 0.8], [-0.2, 0.4, 1.0, -1.0]], dtype=F64)


def linear(t, y):
    return -K * y + y @ A.T


def exact(t):
    return Y0 @ torch.from_numpy(expm((torch.diag(-K) + A).numpy() * t)).T


@pytest.mark.parametrize("name", list(METHODS))
def test_order_of_convergence_with_a_stiff_diagonal(name):
    """Steps h = 0.05, 0.025 over [0, 2] with k h up to 2.5: the error falls by 2^p, p the
    method's order. (At larger k h the order is lower: etdrk4 2.6 and 3.4 from h = 0.2 and
    0.1, the stiff order reduction of Hochbruck & Ostermann 2005.)"""
    errors = [float((rk.solve_exponential(linear, Y0, [0.0, 2.0], name, K, step_size=h).ys[-1]
                     - exact(2.0)).abs().max()) for h in (0.05, 0.025)]
    assert errors[0] < 0.01
    assert math.log2(errors[0] / errors[1]) > METHODS[name] - 0.3, errors


def test_explicit_rk4_blows_up_where_etdrk4_does_not():
    """The same system at h = 0.1 (50 h = 5): rk4 diverges, etdrk4 is within 1e-3
    (measured 3.7e-4)."""
    blown = rk.solve(linear, Y0, [0.0, 10.0], rk.TABLEAUX["rk4"], step_size=0.1).ys[-1]
    assert not bool(torch.isfinite(blown).all()) or float(blown.abs().max()) > 1e6
    ok = rk.solve_exponential(linear, Y0, [0.0, 10.0], "etdrk4", K, step_size=0.1).ys[-1]
    torch.testing.assert_close(ok, exact(10.0), rtol=0, atol=1e-3)


@pytest.mark.parametrize("name", list(METHODS))
def test_an_equilibrium_is_a_fixed_point_of_every_step(name):
    """``y' = -k y + tanh(B y) + c`` started at its equilibrium (found by Newton) stays there
    at steps of 4 time constants (Lawson's integrating-factor methods would shift it by
    their quadrature error, ~0.4 % of ``c`` for heun3 at one time constant)."""
    k = torch.tensor([1.0, 2.0, 0.5], dtype=F64)
    B = torch.tensor([[0.0, 0.3, -0.2], [0.2, 0.0, 0.1], [-0.1, 0.4, 0.0]], dtype=F64)
    c = torch.tensor([0.5, -0.3, 0.8], dtype=F64)

    def field(t, y):
        return -k * y + torch.tanh(y @ B.T) + c

    y = torch.zeros(1, 3, dtype=F64)
    for _ in range(30):
        J = torch.func.jacfwd(lambda v: field(0.0, v[None])[0])(y[0])
        y = y - torch.linalg.solve(J, field(0.0, y)[0])[None]
    assert float(field(0.0, y).abs().max()) < 1e-14
    end = rk.solve_exponential(field, y, [0.0, 40.0], name, k, step_size=4.0).ys[-1]
    torch.testing.assert_close(end, y, rtol=0, atol=1e-14)


MODELS = {
    "mixture": lambda: Mixture([5, 6, 6, 3], mu=0.2, feedback="learned", dtype=F64, seed=1),
    "two_phase": lambda: TwoPhaseDTP([5, 6, 6, 3], mu=0.1, trace_tau=2.0, dtype=F64, seed=2),
    "multiplexing": lambda: Multiplexing([5, 6, 6, 3], dtype=F64, seed=3),
}


def perturbed_state(model, batch, trace, seed):
    """A drive (random input and target, the trace gate ``trace``) and a random state near
    its initial one, for the models of :data:`MODELS` (5 inputs, 3 outputs)."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, 5, generator=gen, dtype=F64)
    drive = model.drive(x, 0.2 + 0.5 * torch.rand(batch, 3, generator=gen, dtype=F64),
                        {"trace": trace})
    y = model.initial_state(drive, model.prepare(model.params))
    return drive, y + 0.05 * torch.randn(y.shape, generator=gen, dtype=F64)


@pytest.mark.parametrize("name", list(MODELS))
@pytest.mark.parametrize("trace", [1.0, 0.0])
def test_linear_decay_is_the_fields_own_diagonal(name, trace):
    """For every model that declares it, ``-linear_decay`` is the diagonal of the field's
    Jacobian (forward-mode autodiff) at a random state, with the trace on and off."""
    model = MODELS[name]()
    drive, y = perturbed_state(model, batch=1, trace=trace, seed=7)
    prepared = model.prepare(model.params)
    J = torch.func.jacfwd(lambda v: model.field(0.0, v[None], drive, prepared)[0])(y[0])
    k = model.linear_decay(0.0, drive)
    torch.testing.assert_close(-J.diagonal(), k.expand(y.shape[-1]), rtol=0, atol=1e-12)


def test_simulate_with_etdrk4_matches_tight_dopri5():
    """``simulate(method="etdrk4")`` on a clamped tanh mixture network to t = 20: within 5e-5
    of dopri5 at rtol 1e-12 at one time constant (measured 1.3e-5), and the error falls by
    more than 8x per halving (12x; leaky ReLU's kinks give 3x)."""
    model = Mixture([5, 6, 6, 3], mu=0.2, feedback="learned", transfer="tanh", dtype=F64,
                    seed=1)
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(4, 5, generator=gen, dtype=F64)
    target = 0.3 * torch.tanh(torch.randn(4, 3, generator=gen, dtype=F64))
    t = torch.linspace(0.0, 20.0, 5, dtype=F64)
    ref = ds.simulate(model, x, t, target, rtol=1e-12, atol=1e-14).y
    errors = [float((ds.simulate(model, x, t, target, method="etdrk4", step_size=h).y
                     - ref).abs().max()) for h in (1.0, 0.5)]
    assert errors[0] < 5e-5
    assert errors[0] / errors[1] > 8, errors


def test_coupled_etdrk4_weight_changes_match_tight_dopri5():
    """A coupled presentation (two phases of 20 tau, weights integrated with the activity):
    etdrk4 at 3 tau (14 steps, 56 evaluations) against dopri5 at rtol 1e-10, float64.
    Measured: ``W`` 1.9e-2, ``Q`` 2.0e-3 (heun3 at 1.25 tau: 2.4e-3, 1.7e-3); at 0.75 tau
    8e-4, 9e-5. The orders are not clean (leaky-ReLU kinks)."""
    model = TwoPhaseDTP([6, 8, 8, 3], mu=0.1, dtype=F64, seed=4, bias=True, eta=0.02,
                        eta_inv=0.02)
    gen = torch.Generator().manual_seed(11)
    x = torch.randn(8, 6, generator=gen, dtype=F64)
    teach = Nudge(torch.arange(8) % 3, "cross_entropy", 0.5)
    sched = Schedule.two_phase(20.0, 20.0)

    def changes(**kw):
        result = present(model, x, teach, sched, mode="coupled", **kw)
        return result.nfev, {n: torch.cat([(p - p0).flatten() for p, p0 in
                                           zip(result.params[n], model.params[n])])
                             for n in ("W", "Q")}

    _, ref = changes(rtol=1e-10, atol=1e-12)
    nfev, coarse = changes(method="etdrk4", step_size=3.0)
    _, fine = changes(method="etdrk4", step_size=0.75)
    assert nfev == 56
    for n in ref:
        assert float(ref[n].norm()) > 1e-3, n                   # the weights did move
        err_coarse = float((coarse[n] - ref[n]).norm() / ref[n].norm())
        err_fine = float((fine[n] - ref[n]).norm() / ref[n].norm())
        assert err_coarse < 3e-2 and err_coarse / err_fine > 8, (n, err_coarse, err_fine)


def test_bad_use_of_the_exponential_methods_is_a_clear_error():
    model = CDTP([4, 4, 4], dtype=F64, seed=0)
    x = torch.zeros(2, 4, dtype=F64)
    with pytest.raises(ValueError, match="linear_decay"):
        ds.simulate(model, x, [0.0, 1.0], method="etdrk4", step_size=0.5)
    with pytest.raises(ValueError, match="fixed-step: give step_size"):
        Integrator("etdrk2")
    mixture = MODELS["mixture"]()
    with pytest.raises(ValueError, match="no exponential method"):
        ds.simulate(mixture, torch.zeros(2, 5, dtype=F64), [0.0, 1.0], method="etd1",
                    step_size=0.5, adjoint=True)


def test_a_state_of_lanes_steps_as_one_flat_state():
    """The linear system above split into two lanes (the decaying columns, and the column
    without decay, whose coefficients are plain numbers): every method gives the flat
    state's result to round-off, and both the exact solution within the flat errors."""
    split = 3

    def lanes(t, y):
        flat = linear(t, torch.cat(y, dim=-1))
        return flat[:, :split], flat[:, split:]

    for name in METHODS:
        flat = rk.solve_exponential(linear, Y0, [0.0, 1.0, 2.0], name, K, step_size=0.1)
        two = rk.solve_exponential(lanes, (Y0[:, :split], Y0[:, split:]), [0.0, 1.0, 2.0],
                                   name, (K[:split], 0), step_size=0.1)
        assert isinstance(two.ys, tuple) and two.nfev == flat.nfev == 20 * METHODS[name]
        torch.testing.assert_close(torch.cat(two.ys, dim=-1), flat.ys, rtol=0, atol=1e-14)
        torch.testing.assert_close(two.ys[0][-1], exact(2.0)[:, :split], rtol=0, atol=0.02)


def test_coupled_simulate_with_etdrk4_reports_every_output_time():
    """``simulate(plastic=True, method="etdrk4")`` (two lanes: activity and weights) at five
    output times against dopri5 at rtol 1e-10, at half a time constant: the activity within
    2e-4 (measured 4.6e-5), the weights' changes within 1e-3 of their size (measured 8e-5 for
    ``W``, 1e-4 for ``Q``)."""
    model = TwoPhaseDTP([5, 6, 6, 3], mu=0.1, trace_tau=2.0, dtype=F64, seed=2, eta=0.05,
                        eta_inv=0.05)
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(4, 5, generator=gen, dtype=F64)
    target = 0.3 * torch.rand(4, 3, generator=gen, dtype=F64)
    t = torch.linspace(0.0, 6.0, 5, dtype=F64)
    ref = ds.simulate(model, x, t, target, plastic=True, rtol=1e-10, atol=1e-12)
    got = ds.simulate(model, x, t, target, plastic=True, method="etdrk4", step_size=0.5)
    assert got.y.shape == ref.y.shape == (5, 4, model.state_size)
    torch.testing.assert_close(got.y, ref.y, rtol=0, atol=2e-4)
    for n in ("W", "Q"):
        moved = max(float((p - p0).abs().max()) for p, p0 in zip(ref.params[n], model.params[n]))
        assert moved > 1e-3, n                                # the weights did move
        for p, q in zip(got.params[n], ref.params[n]):
            torch.testing.assert_close(p, q, rtol=0, atol=1e-3 * moved)


@pytest.mark.parametrize("name", ["mixture", "two_phase"])
@pytest.mark.parametrize("trace", [1.0, 0.0])
def test_rates_without_decay_are_the_field_plus_its_linear_decay(name, trace):
    """``field_and_plasticity(..., without_decay=True)`` of the models that declare
    ``rates_without_decay``: the field plus ``linear_decay`` times the state (both computed by
    the plain field), the plasticity unchanged."""
    model = MODELS[name]()
    assert model.rates_without_decay
    drive, y = perturbed_state(model, batch=3, trace=trace, seed=8)
    field, rules = model.field_and_plasticity(0.0, y, drive, model.params)
    nonlinear, same_rules = model.field_and_plasticity(0.0, y, drive, model.params,
                                                       without_decay=True)
    k = model.linear_decay(0.0, drive)
    assert float((k * y).abs().max()) > 0.1                 # the decay is not negligible
    torch.testing.assert_close(nonlinear, field + k * y, rtol=0, atol=1e-14)
    for n in rules:
        for a, b in zip(rules[n], same_rules[n]):
            assert (a is None and b is None) or torch.equal(a, b)


def test_coupled_etdrk4_reads_the_rates_without_decay_or_adds_the_decay_itself(monkeypatch):
    """The same coupled presentation with the model's own ``N`` and with the engine adding
    ``k y`` to the field (``rates_without_decay`` switched off): weights equal to round-off."""
    model = TwoPhaseDTP([6, 8, 8, 3], mu=0.1, dtype=F64, seed=4, bias=True, eta=0.02,
                        eta_inv=0.02)
    x = torch.randn(8, 6, generator=torch.Generator().manual_seed(11), dtype=F64)
    teach = Nudge(torch.arange(8) % 3, "cross_entropy", 0.5)
    sched = Schedule.two_phase(20.0, 20.0)
    kw = dict(mode="coupled", method="etdrk4", step_size=3.0)
    own = present(model, x, teach, sched, **kw).params
    monkeypatch.setattr(TwoPhaseDTP, "rates_without_decay", False)
    added = present(model, x, teach, sched, **kw).params
    for n in ("W", "b", "Q"):
        for p, q, p0 in zip(own[n], added[n], model.params[n]):
            assert float((q - p0).abs().max()) > 1e-4, n        # the weights did move
            torch.testing.assert_close(p, q, rtol=0, atol=1e-13)
