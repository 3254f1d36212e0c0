"""CDTP (B20 §10.2) and B20's discrete algorithms: the propositions of §10.2, the convergence
claims of §5 and §6.2, eq. 12, the gate waveforms and the trap of a smooth symmetric gate."""
import math

import pytest
import torch

from dendrite_sim import fixed_point, simulate
from dendrite_sim.dynamics.gates import oscillation
from dendrite_sim.dynamics.teaching import Nudge
from dendrite_sim.learning.learners import learner_class
from dendrite_sim.learning.presentation import Frozen
from dendrite_sim.learning.learners.bengio_dtp import (dtp1_update, input_correction,
                                                       output_correction)
from dendrite_sim.models.cdtp import CDTP

D = torch.float64


def square_net(gamma_min=0.0, waveform="plateau", **kw):
    """A square, invertible network (leaky ReLU: closed-form inverses)."""
    kw = {"sigma": "leaky_relu", "slope": 0.5, "decoder": "plain", "eta_omega": 0.0, **kw}
    return CDTP([4, 4, 4, 4], dtype=D, gamma_min=gamma_min, waveform=waveform, period=20.0,
                seed=1, **kw)


def batch(B=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(B, 4, generator=g, dtype=D), torch.randint(0, 4, (B,), generator=g)


def relaxed(model, gamma, x=None, y=None):
    """The equilibrium of the relaxation at constant gate ``gamma`` from the feed-forward
    state (the buffers hold the forward pass)."""
    x, y = batch() if x is None else (x, y)
    teach, gates = Nudge(y, "cross_entropy", 0.3), (lambda t: {"gamma": gamma})
    start = model.initial_state(model.drive(x, teach, gates), model.params)
    view = Frozen(model, ("a",), start)               # the buffers hold (their rates vanish)
    eq = fixed_point(view, x, teach, gates=gates, y0=view.restrict(start), tol=1e-12)
    assert bool(eq.converged.all())
    return x, y, model.layout.unpack(view.embed(eq.y))


def exact_inverse(model, l, y):
    """``f_l^{-1}(y) = sigma^{-1}(W_l^{-1} y)`` (square layers, leaky ReLU), independent of
    the model's own :meth:`exact_inverse`."""
    W = model.params["W"][l - 1]
    v = torch.linalg.solve(W, y.T).T
    return torch.where(v >= 0, v, v / model.slope)


# -- propositions of §10.2 -----------------------------------------------------------------
@pytest.mark.parametrize("gamma", [0.0, 0.4])
def test_p1_p2_targets_are_exact_inverses_at_convergence(gamma):
    model = square_net()
    _, _, p = relaxed(model, gamma)
    for l in range(2, model.depth + 1):
        assert torch.allclose(p["tau"][l - 1], p["h"][l - 1], atol=1e-7)          # P1
        inv = exact_inverse(model, l, p["tau"][l - 1])                              # P2
        assert torch.allclose(p["tau"][l - 2], inv, atol=1e-7)
    # the targets moved: the check is not the trivial tau = a
    assert float((p["tau"][0] - p["a"][0]).norm()) > 1e-2


def test_p5_weight_change_is_held_factor_times_target_change():
    model = square_net(eta=0.5, layer_factor=True)
    x, y = batch()
    sch = model.default_schedule(plastic_omega=False)
    teach = Nudge(y, "cross_entropy", 0.3)
    plateau_end = model.duty * model.period
    on_plateau = simulate(model, x, [0.0, plateau_end], teach, gates=sch.gates,
                          breakpoints=sch.breakpoints, plastic=True)
    for w1, w0 in zip(on_plateau.params["W"], model.params["W"]):
        assert torch.equal(w1, w0)                                   # zero on the plateau
    T = model.period
    tr = simulate(model, x, [0.0, T], teach, gates=sch.gates, breakpoints=sch.breakpoints,
                  plastic=True, rtol=1e-8, atol=1e-10)
    p = model.layout.unpack(tr.final)
    n = model.normalised_inputs(x, p["a"])
    for k in range(model.depth):
        expected = model.eta * ((p["s"][k] * (p["tau"][k] - p["a"][k])).T @ n[k]) / x.shape[0]
        got = tr.params["W"][k] - model.params["W"][k]
        assert float(got.norm()) > 1e-3
        assert float((got - expected).norm()) < 1e-5 * float(expected.norm())


def test_p6_delta1_is_sgd_on_reconstruction_at_gamma_one():
    model = square_net(eta_omega=1.0, feedback_rule="delta1")
    x, y = batch()
    drive = model.drive(x, Nudge(y, "cross_entropy", 0.3), gates=lambda t: {"gamma": 1.0})
    y0 = model.initial_state(drive, model.params)
    rates = model.plasticity(0.0, y0, drive, model.params)["Omega"]
    a = model.layout.unpack(y0)["a"]
    for l in range(2, model.depth + 1):
        omega = model.params["Omega"][l - 1].clone().requires_grad_(True)
        rec = model.sigma(model.f(l, a[l - 2])) @ omega.T
        loss = 0.5 * (a[l - 2] - rec).pow(2).sum(-1).mean()
        (grad,) = torch.autograd.grad(loss, omega)
        assert torch.allclose(rates[l - 1], -grad, atol=1e-12)


def test_p7_delta1_at_converged_u_and_vanishing_at_gamma_zero():
    for gamma in (0.4, 0.0):
        model = square_net(eta_omega=1.0, feedback_rule="delta1")
        x, y, p = relaxed(model, gamma)
        drive = model.drive(x, Nudge(y, "cross_entropy", 0.3), gates=lambda t: {"gamma": gamma})
        state = torch.cat([p[b.variable][b.layer - 1] for b in model.layout.blocks], -1)
        rates = model.plasticity(0.0, state, drive, model.params)["Omega"]
        for l in range(2, model.depth + 1):
            u = p["u"][l - 1]
            inv = exact_inverse(model, l, p["tau"][l - 1])
            expected = (inv - model.g(l, u)).T @ model.sigma(u) / x.shape[0]
            assert torch.allclose(rates[l - 1], expected, atol=1e-7)
            if gamma == 0.0:
                assert float(rates[l - 1].abs().max()) == 0.0


def test_p8_delta1_equals_gamma_delta2_along_a_trajectory():
    one = square_net(eta_omega=1.0, feedback_rule="delta1", waveform="sawtooth")
    two = one.replace(feedback_rule="delta2")
    x, y = batch()
    sch = one.default_schedule()
    teach = Nudge(y, "cross_entropy", 0.3)
    t = torch.linspace(0.0, one.period, 41, dtype=D)
    tr = simulate(one, x, t, teach, gates=sch.gates, breakpoints=sch.breakpoints)
    drive = one.drive(x, teach, gates=sch.gates)
    checked = 0
    for ti, yi in zip(t, tr.y):
        gamma = sch.gates(float(ti))["gamma"]
        r1 = one.plasticity(ti, yi, drive, one.params)["Omega"]
        r2 = two.plasticity(ti, yi, drive, two.params)["Omega"]
        for a, b in zip(r1[1:], r2[1:]):
            assert torch.allclose(a, gamma * b, atol=1e-13)
            checked += float(b.norm()) > 1e-6 and 0.0 < gamma < 1.0
    assert checked > 10


# -- the gate and the trap of §2.4 (ii) -------------------------------------------------------
def _train(waveform, cycles=2):
    model = CDTP([4, 6, 6, 3], dtype=D, waveform=waveform, period=20.0, eta=1.0, seed=3)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(8, 4, generator=g, dtype=D), torch.randint(0, 3, (8,), generator=g)
    sch = model.default_schedule(cycles=cycles, plastic_omega=False)
    tr = simulate(model, x, [0.0, sch.duration], Nudge(y, "cross_entropy", 0.5),
                  gates=sch.gates, breakpoints=sch.breakpoints, plastic=True, rtol=1e-7,
                  atol=1e-9)
    loss = torch.nn.functional.cross_entropy
    return (float(loss(model.forward(model.params, x), y)),
            float(loss(model.forward(tr.params, x), y)),
            sum(float((a - b).norm()) for a, b in zip(tr.params["W"], model.params["W"])))


def test_fast_return_learns_and_smooth_symmetric_gate_does_not():
    before, after, moved = _train("plateau")
    before_s, after_s, moved_s = _train("sinusoid")
    assert after < before - 0.05            # the default waveform learns
    assert moved_s < 0.1 * moved            # the symmetric gate integrates dW to ~0
    assert abs(after_s - before_s) < 0.1 * (before - after)


def test_waveforms_values_and_breakpoints():
    w = oscillation("plateau", period=10.0, duty=0.3, gamma_min=0.2, cycles=2, fall=0.1)
    assert w.breakpoints == (3.0, 4.0, 10.0, 13.0, 14.0)
    assert w(2.9) == 1.0 and w(3.5) == pytest.approx(0.6) and w(9.9) == 0.2 and w(10.0) == 1.0
    s = oscillation("sinusoid", period=10.0, gamma_min=0.0, cycles=1, levels=(0.5,))
    assert s.breakpoints == pytest.approx((2.5, 7.5))
    assert s(5.0) == pytest.approx(0.0) and s(2.5) == pytest.approx(0.5)
    saw = oscillation("sawtooth", period=10.0, duty=0.5, gamma_min=0.0)
    assert saw(7.5) == pytest.approx(0.5)
    wave = oscillation("square", period=10.0, duty=0.3, delay=2.0)
    assert wave(1.0) == 0.0 and wave(2.0) == 1.0 and wave.breakpoints == (2.0, 5.0)


def test_travelling_wave_gives_each_layer_its_delayed_gate():
    model = CDTP([3, 3, 3], wave_delay=2.0, period=10.0, duty=0.3)
    sch = model.default_schedule()
    gates = sch.gates(4.0)
    assert gates["gamma_1"] == 0.0 and gates["gamma_2"] == 1.0
    assert 2.0 in sch.breakpoints and 5.0 in sch.breakpoints


# -- iterative inversion (§5, §6.2) -----------------------------------------------------------
def designed_layer(alpha, n=5, seed=0):
    """Linear ``f(x) = W x``, ``g(y) = Omega y`` with ``f(g(u)) = (I - alpha M) u``, ``M``
    symmetric with spectral radius 1."""
    g = torch.Generator().manual_seed(seed)
    W = torch.randn(n, n, generator=g, dtype=D) + 3 * torch.eye(n, dtype=D)
    q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=D))
    M = q @ torch.diag(torch.linspace(-1.0, 1.0, n, dtype=D)) @ q.T
    omega = torch.linalg.solve(W, torch.eye(n, dtype=D) - alpha * M)
    return (lambda v: v @ W.T), (lambda y: y @ omega.T), W


@pytest.mark.parametrize("alpha", [0.3, 0.7])
def test_inversion_contracts_at_the_designed_rate(alpha):
    f, g, W = designed_layer(alpha)
    tau = torch.randn(2, 5, dtype=D, generator=torch.Generator().manual_seed(4))
    steps = int(math.log(1e-7) / math.log(alpha))      # stay above round-off
    u, inc = input_correction(f, g, tau, tau, steps)
    assert torch.allclose(f(g(u)), tau, atol=1e-5)                         # eq. 26
    rate = (inc[-1] / inc[-3]).sqrt()      # two steps: eigenvalues +-alpha alternate
    assert torch.allclose(rate, torch.full_like(rate, alpha), rtol=1e-3)
    x, inc = output_correction(f, g, tau, g(tau), steps)
    assert torch.allclose(f(x), tau, atol=1e-5)                            # eq. 25
    rate = (inc[-1] / inc[-3]).sqrt()
    assert torch.allclose(rate, torch.full_like(rate, alpha), rtol=1e-3)


def test_inversion_diverges_past_alpha_one():
    f, g, _ = designed_layer(1.3)
    tau = torch.ones(1, 5, dtype=D)
    _, inc = input_correction(f, g, tau, tau, 30)
    assert float(inc[-1] / inc[-2]) == pytest.approx(1.3, rel=1e-3)
    _, inc = output_correction(f, g, tau, g(tau), 30)
    assert float(inc[-1]) > 100 * float(inc[0])


def test_model_contraction_is_prop3_spectral_radius():
    """Prop. 3 from the model's Jacobian against the closed form ``max |1 - (1-gamma)(1 -
    alpha mu)|`` over the eigenvalues ``mu`` of ``M`` (identity sigma, designed layer)."""
    alpha = 0.6
    model = CDTP([5, 5, 5], sigma="identity", dtype=D, decoder="plain")
    f, g, W = designed_layer(alpha)
    model.params["W"][1] = W
    model.params["Omega"][1] = g(torch.eye(5, dtype=D)).T
    u = torch.randn(3, 5, dtype=D)
    mu = torch.linspace(-1.0, 1.0, 5, dtype=D)
    for gamma in (0.0, 0.5):
        rho = model.contraction(2, u, torch.zeros_like(u), gamma)
        expected = float((1 - (1 - gamma) * (1 - alpha * mu)).abs().max())
        assert torch.allclose(rho, torch.full_like(rho, expected), atol=1e-10)


# -- eq. 12 and the discrete learners ---------------------------------------------------------
def test_dtp1_update_moves_h_to_tau_exactly():
    model = square_net()
    x, _ = batch(B=1)
    h = model.forward_pass(x)
    tau = h[1] + 0.3 * torch.randn_like(h[1])
    W = model.params["W"][1] + dtp1_update(model.sigma(h[0]), tau, h[1])[0]
    assert torch.allclose(model.sigma(h[0]) @ W.T, tau, atol=1e-12)


def test_algorithm_one_reduces_the_loss():
    model = CDTP([4, 6, 6, 3], dtype=D, seed=2)
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(16, 4, generator=g, dtype=D), torch.randint(0, 3, (16,), generator=g)
    for name in ("bengio_alg1", "bengio_dtp"):
        learner = learner_class(name)(model, lr=0.5, beta=0.5)
        before = learner.loss(x, y)
        for _ in range(10):
            learner.step(x, y)
        assert learner.loss(x, y) < before - 0.05


# -- bad input ------------------------------------------------------------------------------
@pytest.mark.parametrize("kw, word", [({"gamma_min": 1.0}, "gamma_min"),
                                      ({"gamma_min": -0.1}, "gamma_min"),
                                      ({"period": 0.0}, "period"),
                                      ({"duty": 1.0}, "duty"),
                                      ({"tau_u": -1.0}, "tau_u"),
                                      ({"waveform": "triangle"}, "waveform"),
                                      ({"feedback_rule": "delta3"}, "feedback_rule")])
def test_bad_model_parameters(kw, word):
    with pytest.raises(ValueError, match=word):
        CDTP([3, 3, 3], **kw)


@pytest.mark.parametrize("kw, word", [({"gamma_min": 1.0}, "gamma_min"),
                                      ({"period": -1.0}, "period"),
                                      ({"duty": 0.0}, "duty"),
                                      ({"cycles": 0}, "cycles"),
                                      ({"shape": "plateau", "fall": 0.9}, "fall")])
def test_bad_waveforms(kw, word):
    with pytest.raises(ValueError, match=word):
        oscillation(**kw)


def test_exact_inverse_needs_equal_sizes():
    model = CDTP([4, 6, 3])
    with pytest.raises(ValueError, match="equal"):
        model.exact_inverse(2, torch.zeros(1, 3))
    square = square_net()
    x, _ = batch()
    h = square.forward_pass(x)
    assert torch.allclose(square.exact_inverse(2, h[1]), h[0], atol=1e-10)


# -- continuation in gamma_min -----------------------------------------------------------------
def closed_form_relaxation(model, x, y, gamma, beta):
    """The equilibrium of the feedback phase at constant ``gamma`` (buffers at the forward
    pass) on a square leaky-ReLU network with the plain decoder, in closed form:
    ``tau_L = a_L - (1 - gamma) beta dLoss/da_L``, ``h_l = tau_l`` (P1), ``tau_{l-1} =
    f_l^{-1}(tau_l)`` (P2), ``sigma(u_l) = Omega_l^{-1} (tau_{l-1} - gamma a_{l-1}) / (1 -
    gamma)`` (eq. 49), ``h_1 = f_1(x)``, ``s = 1``."""
    a = model.forward_pass(x)
    onehot = torch.nn.functional.one_hot(y, a[-1].shape[-1]).to(D)
    tau = [None] * model.depth
    tau[-1] = a[-1] - (1 - gamma) * beta * (torch.softmax(a[-1], -1) - onehot)
    for l in range(model.depth, 1, -1):
        tau[l - 2] = exact_inverse(model, l, tau[l - 1])
    h = [a[0]] + tau[1:]
    u = [a[0][..., :0]]
    for l in range(2, model.depth + 1):
        v = torch.linalg.solve(model.params["Omega"][l - 1],
                               ((tau[l - 2] - gamma * a[l - 2]) / (1 - gamma)).T).T
        u.append(torch.where(v >= 0, v, v / model.slope))
    ones = [torch.ones_like(t[..., :1]) for t in tau]
    parts = {"h": h, "a": a, "u": u, "tau": tau, "s": ones}
    return torch.cat([parts[b.variable][b.layer - 1] for b in model.layout.blocks], -1)


def test_continuation_in_gamma_min_follows_the_closed_form_equilibrium():
    from dendrite_sim import continuation
    model = square_net()
    x, y = batch()
    teach = Nudge(y, "cross_entropy", 0.3)
    start = model.initial_state(model.drive(x, teach), model.params)
    values = [0.8, 0.6, 0.4, 0.2, 0.0]          # from the gentle end, warm-started
    res = continuation(model.feedback_phase(start, values[0]), x,
                       lambda view, g: model.feedback_phase(start, g), values, teach,
                       tol=1e-12)
    assert bool(res.converged.all()) and bool(res.stable.all())
    for k, gamma in enumerate(values):
        view = model.feedback_phase(start, gamma)
        expected = closed_form_relaxation(model, x, y, gamma, 0.3)
        assert torch.allclose(view.embed(res.states[k]), expected, atol=1e-8)
    # the targets do move with gamma_min (the teaching fades as (1 - gamma))
    change = [float((res.states[k] - res.states[0]).norm()) for k in range(1, len(values))]
    assert change == sorted(change) and change[0] > 1e-3


# -- many examples in one batch, each with its own cycle -------------------------------------
def test_each_example_of_a_batch_runs_its_own_cycle():
    model = CDTP([4, 6, 6, 3], dtype=D, period=10.0, duty=0.3, seed=3)
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(3, 4, generator=g, dtype=D), torch.randint(0, 3, (3,), generator=g)
    offsets = [0.0, 2.5, 6.0]
    gates, points = model.example_cycles(offsets)
    t = torch.linspace(0.0, 10.0, 21, dtype=D)
    tight = dict(rtol=1e-10, atol=1e-12)
    together = simulate(model, x, t, Nudge(y, "cross_entropy", 0.5), gates=gates,
                        breakpoints=points, **tight)
    drive = model.drive(x, Nudge(y, "cross_entropy", 0.5), gates=gates)
    k = 14                                  # t = 7: examples 0, 1 relax, example 2 is on its plateau
    assert gates(t[k])["gamma"].flatten().tolist() == [0.0, 0.0, 1.0]
    rates = model.plasticity(t[k], together.y[k], drive, model.params)["W"]
    mean = [torch.zeros_like(w) for w in model.params["W"]]
    for b, delay in enumerate(offsets):
        wave = oscillation("plateau", 10.0, 0.3, 0.0, 1, model.fall, delay,
                           levels=(model.gamma_ff,))
        assert set(wave.breakpoints) <= set(points)
        alone = simulate(model, x[b:b + 1], t, Nudge(y[b:b + 1], "cross_entropy", 0.5),
                         gates=lambda s, w=wave: {"gamma": w(s)}, breakpoints=wave.breakpoints,
                         **tight)
        assert torch.allclose(together.y[:, b], alone.y[:, 0], atol=1e-8)
        one = model.drive(x[b:b + 1], Nudge(y[b:b + 1], "cross_entropy", 0.5),
                          gates=lambda s, w=wave: {"gamma": w(s)})
        r = model.plasticity(t[k], together.y[k, b:b + 1], one, model.params)["W"]
        mean = [m + (0 if q is None else q) / len(offsets) for m, q in zip(mean, r)]
    assert all(torch.allclose(p, q, atol=1e-14) for p, q in zip(rates, mean))
    assert float(mean[0].norm()) > 1e-4


def test_example_cycles_rejects_bad_offsets():
    with pytest.raises(ValueError, match="offsets"):
        CDTP([3, 3, 3]).example_cycles([0.0, -1.0])
