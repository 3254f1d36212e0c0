"""The lean Runge-Kutta integrator (dendrite_sim/dynamics/rk.py), its settings object and its
wiring: orders of every tableau against a closed form, adaptive accuracy against scipy's DOP853,
the step budget, per-example steps, event-terminated relaxation, the jump hook."""
import math

import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp
from scipy.linalg import expm

import dendrite_sim as ds
from dendrite_sim.dynamics import rk
from dendrite_sim.dynamics.integrate import Integrator, relax
from dendrite_sim.dynamics.integrators import DEFAULT_MAX_STEPS, METHODS
from dendrite_sim.models import Mixture

F64 = torch.float64
# a linear, non-autonomous ODE (a damped rotation at a varying rate): y' = cos(t) A y,
# y(t) = expm(A sin t) y0 (a constant-coefficient one would test only the stability function:
# tsit5 matches exp(z) to order 6 there)
A = torch.tensor([[-0.3, 1.0], [-1.0, -0.3]], dtype=F64)
Y0 = torch.tensor([[1.0, 0.0], [0.3, -0.7], [-0.5, 0.2]], dtype=F64)


def linear(t, y):
    return math.cos(t) * (y @ A.T)


def exact(t):
    return Y0 @ torch.from_numpy(expm(A.numpy() * math.sin(t))).T


def _order(errors):
    return math.log2(errors[0] / errors[1])


@pytest.mark.parametrize("name", list(rk.TABLEAUX))
def test_order_of_convergence(name):
    """Fixed steps h and h/2 over [0, 2]: the global error falls by 2^p (at least; tsit5
    shows 6.2 on this linear problem, its p = 5 on general ones)."""
    tab = rk.TABLEAUX[name]
    t = torch.tensor([0.0, 2.0], dtype=F64)
    h = 0.2 if tab.order >= 4 else 0.1
    errors = [float((rk.solve(linear, Y0, t, tab, step_size=step).ys[-1] - exact(2.0))
                    .abs().max()) for step in (h, h / 2)]
    assert tab.order - 0.3 < _order(errors) < tab.order + 1.3, (name, _order(errors))


@pytest.mark.parametrize("name", [n for n, tab in rk.TABLEAUX.items() if tab.adaptive])
def test_embedded_error_estimate_and_dense_output_orders(name):
    """One step of h and h/2: the error estimate scales as h^p (an embedded solution of order
    p - 1), the dense output at theta = 0.37 as h^(q+1) (q = 4 for dopri5 and tsit5, 3 for
    the Hermite cubic of bosh3)."""
    stages, tab = rk._Stages(rk.TABLEAUX[name], Y0), rk.TABLEAUX[name]
    estimates, dense = [], []
    for h in (0.2, 0.1):
        y1, K, _ = stages.step(linear, 0.0, Y0, None, h)
        estimates.append(float(stages.error(K, h).abs().max()))
        dense.append(float((stages.dense(Y0, K, h, [0.37])[0] - exact(0.37 * h)).abs().max()))
    assert abs(_order(estimates) - tab.order) < 0.3, _order(estimates)
    q = 4 if name in ("dopri5", "tsit5") else 3
    assert abs(_order(dense) - (q + 1)) < 0.35, _order(dense)


def _network(n=4, batch=3, seed=2):
    model = Mixture([n, n, n, n], mu=0.2, transfer="tanh", feedback="learned", dtype=F64,
                    seed=seed)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(batch, n, dtype=F64, generator=g)
    target = 0.3 * torch.tanh(torch.randn(batch, n, dtype=F64, generator=g))
    return model, x, target


def _scipy(model, x, target, t):
    """Each example by scipy DOP853 at rtol 1e-12: (T, B, N)."""
    out = []
    for k in range(x.shape[0]):
        drive = model.drive(x[k:k + 1], target[k:k + 1])
        prepared = model.prepare(model.params)
        y0 = model.initial_state(drive, prepared)[0].numpy()
        sol = solve_ivp(lambda s, y: model.field(s, torch.from_numpy(y)[None], drive,
                                                 prepared)[0].numpy(),
                        (float(t[0]), float(t[-1])), y0, method="DOP853", t_eval=t.numpy(),
                        rtol=1e-12, atol=1e-14)
        out.append(sol.y.T)
    return torch.tensor(np.stack(out, 1), dtype=F64)


@pytest.mark.parametrize("method, rtol, tol", [("dopri5", 1e-9, 1e-7), ("tsit5", 1e-9, 1e-7),
                                               ("bosh3", 1e-7, 1e-5)])
def test_adaptive_matches_scipy_dop853(method, rtol, tol):
    """Adaptive solutions (dense output at 7 times) against DOP853 at rtol 1e-12; the error
    shrinks with rtol (the comparison can fail)."""
    model, x, target = _network()
    t = torch.linspace(0.0, 12.0, 7, dtype=F64)
    ref = _scipy(model, x, target, t)
    err = float((ds.simulate(model, x, t, target, method=method, rtol=rtol,
                             atol=rtol / 100).y - ref).abs().max())
    loose = float((ds.simulate(model, x, t, target, method=method, rtol=1e-4,
                               atol=1e-6).y - ref).abs().max())
    assert err < tol < loose, (err, loose)


def test_torchdiffeq_methods_by_name_from_its_registry():
    import sys
    for name in sys.modules["torchdiffeq._impl.odeint"].SOLVERS:
        assert f"torchdiffeq:{name}" in METHODS
    model, x, target = _network()
    t = torch.tensor([0.0, 3.0], dtype=F64)
    lean = ds.simulate(model, x, t, target, rtol=1e-10, atol=1e-12)
    other = ds.simulate(model, x, t, target, method="torchdiffeq:dopri8", rtol=1e-10,
                        atol=1e-12)
    torch.testing.assert_close(lean.final, other.final, rtol=0, atol=1e-8)


def test_coupled_mode_lean_matches_torchdiffeq():
    """Coupled plasticity (flat state, tuple max-RMS norm, tensor atol) on the lean dopri5 and
    on torchdiffeq's give the same weights to the tolerance."""
    model = Mixture([4, 4, 4], mu=0.2, transfer="tanh", feedback="learned", eta=0.05,
                    eta_inv=0.05, dtype=F64, seed=2)
    x = torch.randn(3, 4, dtype=F64, generator=torch.Generator().manual_seed(1))
    target = ds.Nudge(torch.full((3, 4), 0.3, dtype=F64), "mse", 0.5)
    t = torch.tensor([0.0, 5.0], dtype=F64)
    a, b = (ds.simulate(model, x, t, target, method=m, plastic=True, rtol=1e-9, atol=1e-11)
            for m in ("dopri5", "torchdiffeq:dopri5"))
    change = (a.params["W"][0] - model.params["W"][0]).abs().max()
    assert change > 1e-3
    for name in ("W", "Q"):
        for p, q in zip(a.params[name], b.params[name]):
            if p is not None:
                torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


# -- step budget -------------------------------------------------------------------------------
def test_budget_raises_naming_time_and_budget():
    """A horizon of 1000 tau needs hundreds of steps (explicit stability): a budget of 30
    stops it, on both engines; fixed steps are counted before they start."""
    model = Mixture([2, 2, 2], mu=0.2, transfer="tanh", dtype=F64, seed=0)
    x, target = torch.ones(1, 2, dtype=F64), torch.full((1, 2), 0.3, dtype=F64)
    with pytest.raises(ds.NumericalError, match=r"stopped at t = .*max_steps=30"):
        ds.simulate(model, x, [0.0, 1000.0], target, integrator=Integrator(max_steps=30))
    with pytest.raises(ds.NumericalError, match=r"stopped at t = .*max_steps=30"):
        ds.simulate(model, x, [0.0, 1000.0], target,
                    integrator=Integrator("torchdiffeq:dopri5", max_steps=30))
    with pytest.raises(ds.NumericalError, match=r"max_steps=20"):      # torchdiffeq's name
        ds.simulate(model, x, [0.0, 1000.0], target, options={"max_num_steps": 20})
    fast = model.replace(tau=1e-6)                  # today's hang: no hang by default
    with pytest.raises(ds.NumericalError, match=r"max_steps=10000"):
        ds.simulate(fast, x, [0.0, 1e6], target, method="rk4", step_size=1e-6)
    assert Integrator().max_steps == DEFAULT_MAX_STEPS < 10 ** 6


@pytest.mark.parametrize("kwargs, match", [
    (dict(rtol=0.0), r"rtol must lie in \(0"), (dict(rtol=2.0), r"rtol must lie in \(0"),
    (dict(atol=-1.0), r"atol must lie in \(0"),
    (dict(atol=torch.tensor([1e-8, 0.0])), r"atol must lie in \(0"),
    (dict(max_steps=0), r"max_steps must be an integer in \[1"),
    (dict(method="rk45"), r"method must be one of"),
    (dict(method="rk4"), r"step_size"), (dict(step_size=-1.0), r"step_size must lie in \(0"),
    (dict(options={"bogus": 1}), r"options of method 'dopri5' must be among"),
    (dict(method="rk4", step_size=0.1, per_example=True), r"per_example"),
    (dict(max_abs=0.0), r"max_abs must lie in \(0")])
def test_integrator_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Integrator(**kwargs)


# -- per-example steps and relaxation ----------------------------------------------------------
def test_per_example_steps_equal_batched_result():
    model, x, target = _network(batch=5)
    t = torch.linspace(0.0, 10.0, 4, dtype=F64)
    shared = ds.simulate(model, x, t, target, rtol=1e-10, atol=1e-12)
    own = ds.simulate(model, x, t, target,
                      integrator=Integrator(rtol=1e-10, atol=1e-12, per_example=True))
    torch.testing.assert_close(own.y, shared.y, rtol=0, atol=1e-8)
    # an example's steps do not depend on the others in its batch
    alone = ds.simulate(model, x[2:3], t, target[2:3],
                        integrator=Integrator(rtol=1e-6, atol=1e-8, per_example=True))
    batch = ds.simulate(model, x, t, target,
                        integrator=Integrator(rtol=1e-6, atol=1e-8, per_example=True))
    torch.testing.assert_close(batch.y[:, 2:3], alone.y, rtol=0, atol=1e-12)


def test_relax_stops_each_example_where_it_settles():
    model, x, target = _network(batch=4)
    tol = 1e-5
    res = relax(model, x, target, tol=tol, t_max=100.0)
    assert bool(res.settled.all())
    drive = model.drive(x, target)
    prepared = model.prepare(model.params)
    assert float(model.field(0.0, res.y, drive, prepared).abs().amax()) < tol
    assert float(res.stop_times.max() - res.stop_times.min()) > 0.1   # stopped separately
    for k in range(4):                               # not settled long before it stopped
        tk = float(res.stop_times[k])
        early = ds.simulate(model, x[k:k + 1], [0.0, 0.5 * tk], target[k:k + 1],
                            rtol=1e-10, atol=1e-12)
        d = model.drive(x[k:k + 1], target[k:k + 1])
        assert float(model.field(0.0, early.final, d, prepared).abs().amax()) > tol
        later = ds.simulate(model, x[k:k + 1], [0.0, tk], target[k:k + 1], rtol=1e-10,
                            atol=1e-12)
        torch.testing.assert_close(res.y[k:k + 1], later.final, rtol=0, atol=1e-6)
    cut = relax(model, x, target, tol=1e-12, t_max=2.0)      # not settled: reported
    assert not bool(cut.settled.any()) and bool((cut.stop_times == 2.0).all())


# -- jump hook ---------------------------------------------------------------------------------
class Jumping(Mixture):
    """A mixture whose state is shifted by 0.05 at every breakpoint; records the calls."""

    def jump(self, t, y, drive, prepared):
        self.calls.append((float(t), tuple(y.shape)))
        return y + 0.05


def test_jump_is_applied_at_every_breakpoint():
    model = Jumping([3, 3, 3], mu=0.2, transfer="tanh", dtype=F64, seed=2)
    model.calls = []
    x = torch.randn(2, 3, dtype=F64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0.0, 1.0, 2.0, 3.0], dtype=F64)
    got = ds.simulate(model, x, t, breakpoints=[1.0, 2.0], rtol=1e-10, atol=1e-12)
    assert model.calls == [(1.0, (2, 6)), (2.0, (2, 6))]
    y = model.initial_state(model.drive(x), model.params)
    pieces = [y]
    for a, b in ((0.0, 1.0), (1.0, 2.0), (2.0, 3.0)):
        y = ds.simulate(model, x, [a, b], y0=y if a == 0.0 else y + 0.05, rtol=1e-10,
                        atol=1e-12).final
        pieces.append(y)
    torch.testing.assert_close(got.y, torch.stack(pieces), rtol=0, atol=1e-9)
    model.calls = []                     # coupled mode: the jump sees the neural state only
    ds.simulate(model, x, t, breakpoints=[1.5], plastic=True)
    assert model.calls == [(1.5, (2, 6))]


def test_a_non_finite_field_at_the_start_is_a_numerical_error():
    """A tanh network started outside (-1, 1): the feedback's atanh is NaN at t = 0; the
    integrator says so before choosing a first step (it used to divide by the NaN norm)."""
    import dendrite_sim as ds
    from dendrite_sim.models import Mixture
    m = Mixture([3, 3, 3], transfer="tanh", feedback="learned", dtype=torch.float64)
    with pytest.raises(ds.NumericalError, match="NaN/inf"):
        ds.simulate(m, torch.zeros(1, 3, dtype=torch.float64), [0.0, 1.0],
                    y0=torch.full((1, 6), 2.0, dtype=torch.float64))
