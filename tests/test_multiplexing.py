"""Multiplexing network (thesis §6.9, docs/multiplexing.md) and its synaptic decoders.

Checked against independent computations (numpy forward pass and burst chain, autograd
Jacobians of an independently written feedback chain, closed-form spectra):
(a) event rates are the same in both phases; equilibria are the forward pass and the chain
    ``p_i = t_i(Q_i p_{i+1})`` (6.47)-(6.50), and fixed points of the field;
(b) the learning signal ``p^f_i - p^l_i`` is (6.59) to first order in eta_hat, the
    reconstruction errors cancelling (a control without the free-phase subtraction does not);
(c) no depth decay, against the two-phase mixing network on the same weights (linear exact
    inverses, and each model's defaults);
(d) the plasticity rules against numpy; the Q rule lowers the reconstruction error;
(e) synaptic decoding: fast synapses reproduce the perfect-decoding model;
(f) bad input raises ValueError naming the parameter.
"""
import dataclasses

import numpy as np
import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.dynamics.teaching import Nudge, loss_gradient
from dendrite_sim.learning import present
from dendrite_sim.learning.schedule import Phase, Schedule
from dendrite_sim.models import TwoPhaseDTP
from dendrite_sim.models.multiplexing import Multiplexing

F64 = torch.float64
#: the earlier defaults (sigmoid burst transfer, Q = W^T), for the tests written against them
SIGMOID = dict(burst_transfer="sigmoid", feedback_init="transpose")


def sig(a):
    return 1.0 / (1.0 + np.exp(-a))


def batch(n, B=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(B, n, generator=g, dtype=F64)


def nudge(B, n, eta_hat=0.1, seed=1):
    g = torch.Generator().manual_seed(seed)
    return Nudge(torch.rand(B, n, generator=g, dtype=F64), "mse", eta_hat)


def numpy_chain(model, x, target):
    """Independent numpy equilibrium: forward pass, then p_L (free: h_L; nudged: clipped
    h_L - eta_hat (h_L - y)) and p_i = sigmoid(Q_i p_{i+1})."""
    W = [w.numpy() for w in model.W]
    b = [c.numpy() for c in model.params["b"]]
    Q = [q.numpy() for q in model.Q]
    h = [x.numpy()]
    for w, c in zip(W, b):
        h.append(sig(h[-1] @ w.T + c))
    p_top = h[-1] if target is None else \
        np.clip(h[-1] - target.eta_hat * (h[-1] - target.y.numpy()), 0.0, 1.0)
    p = [p_top]
    for q in reversed(Q):
        p.insert(0, sig(p[0] @ q.T))
    return h[1:], p


def equilibrium(model, x, target):
    """(event rates, burst probabilities) at the equilibrium under ``target``."""
    eq = ds.fixed_point(model, x, target)
    assert bool(eq.converged.all())
    return eq, eq.layers, model.burst_probabilities(eq.y, model.drive(x, target))


# ----------------------------------------------------------------------------------------------
# (a) equilibria
# ----------------------------------------------------------------------------------------------
def test_equilibria_are_forward_pass_and_burst_chain():
    model = Multiplexing([6, 5, 4, 3], dtype=F64, feedback_init="random", seed=2,
                         burst_transfer="sigmoid")
    model.params["b"] = [0.3 * torch.randn(n, dtype=F64) for n in model.sizes[1:]]
    x, target = batch(6), nudge(4, 3)
    for teach in (None, target):
        eq, h, p = equilibrium(model, x, teach)
        h_np, p_np = numpy_chain(model, x, teach)
        for a, b in zip(h + p, h_np + p_np):
            np.testing.assert_allclose(a.numpy(), b, rtol=0, atol=1e-12)
        # a fixed point of the vector field itself, not only of the relaxation map
        assert float(model.field(0.0, eq.y, model.drive(x, teach), model.params).abs().max()) \
            < 1e-10
    # event rates are the same in both phases; the burst probabilities are not
    _, h_f, p_f = equilibrium(model, x, None)
    _, h_l, p_l = equilibrium(model, x, target)
    assert all(float((a - b).abs().max()) < 1e-12 for a, b in zip(h_f, h_l))
    assert float((p_f[0] - p_l[0]).abs().max()) > 1e-6


def test_simulation_relaxes_to_the_equilibrium_and_spectrum_is_the_time_constants():
    model = Multiplexing([5, 4, 3, 2], dtype=F64, tau_basal=0.5, tau_apical=2.0,
                         trace_tau=4.0)
    x, target = batch(5, B=2), nudge(2, 2)
    eq, _, _ = equilibrium(model, x, target)
    traj = ds.simulate(model, x, torch.tensor([0.0, 150.0], dtype=F64), target, rtol=1e-10,
                       atol=1e-12)
    assert float((traj.y[-1] - eq.y).abs().max()) < 1e-8
    # (6.43)-(6.46) are two acyclic chains: the Jacobian is block triangular with diagonal
    # -1/tau of each variable, so the spectrum is exactly those rates, all real
    spec = ds.spectrum(model, x, eq.y, target)
    want = sorted([-1 / 0.5] * 9 + [-1 / 2.0] * 7 + [-1 / 4.0] * 9)
    got = np.sort(spec.eigenvalues[0].real.numpy())
    np.testing.assert_allclose(got, want, atol=1e-12)
    assert float(spec.eigenvalues.imag.abs().max()) == 0.0
    cont = ds.continuation(model, x, "tau_apical", [1.0, 3.0])
    np.testing.assert_allclose(cont.max_real.numpy(), -0.25, atol=1e-12)


# ----------------------------------------------------------------------------------------------
# (b) the learning signal (6.59)
# ----------------------------------------------------------------------------------------------
def feedback_chain_jacobian(Q, p_free, i):
    """``prod_{k=i}^{L-1} J_{g_k}`` at the free burst probabilities, by autograd of an
    independent ``g_k(v) = sigmoid(Q_k v)``: ``(B, n_i, n_L)``."""
    def chain(top):
        v = top
        for k in range(len(Q), i - 1, -1):         # g_{L-1}, ..., g_i
            v = torch.sigmoid(v @ Q[k - 1].T)
        return v.sum(0)
    return torch.func.jacrev(chain)(p_free[-1]).permute(1, 0, 2)


def test_learning_signal_is_6_59_with_reconstruction_errors_cancelled():
    model = Multiplexing([6, 6, 6, 6, 4], dtype=F64, feedback_init="random",
                         feedback_scale=3.0, seed=3, burst_transfer="sigmoid")
    x = batch(6)
    y = torch.rand(4, 4, generator=torch.Generator().manual_seed(5), dtype=F64)
    _, h, p_f = equilibrium(model, x, None)
    e_L = loss_gradient("mse", h[-1], y)
    errors, controls = {}, {}
    for eta_hat in (1e-2, 5e-3):
        _, _, p_l = equilibrium(model, x, Nudge(y, "mse", eta_hat))
        for i in range(1, model.depth):
            J = feedback_chain_jacobian(model.Q, p_f, i)
            predicted = eta_hat * (J @ e_L[:, :, None])[:, :, 0]
            signal = p_f[i - 1] - p_l[i - 1]
            control = h[i - 1] - p_l[i - 1]          # no free-phase subtraction
            size = float(predicted.norm())
            errors[eta_hat, i] = float((signal - predicted).norm()) / size
            controls[eta_hat, i] = float((control - predicted).norm()) / size
    for i in range(1, model.depth):
        assert errors[1e-2, i] < 0.05                          # first order ...
        assert 1.6 < errors[1e-2, i] / errors[5e-3, i] < 2.4   # ... error O(eta_hat)
        assert controls[1e-2, i] > 20 * errors[1e-2, i]        # reconstruction errors


def test_no_depth_decay_against_two_phase_on_the_same_weights():
    """Linear layers of equal width, exact inverses in both models (``Q_i = W_{i+1}^{-1}``):
    the two-phase signal carries ``(mu/(1-mu))^(L+1-i)``, the multiplexing signal none."""
    sizes, mu, eta_hat = [5, 5, 5, 5, 5], 0.1, 1e-3
    two = TwoPhaseDTP(sizes, mu=mu, feedback="exact", transfer="leaky_relu", slope=1.0,
                      dtype=F64, seed=4)
    mux = Multiplexing(sizes, transfer="identity", burst_transfer="identity", bias=False,
                       dtype=F64)
    mux.params["W"] = [w.clone() for w in two.W]
    mux.params["Q"] = [torch.linalg.inv(w) for w in two.W[1:]]
    x = batch(5, seed=6)
    y = torch.rand(4, 5, generator=torch.Generator().manual_seed(7), dtype=F64)
    target = Nudge(y, "mse", eta_hat)
    _, h, p_f = equilibrium(mux, x, None)
    _, _, p_l = equilibrium(mux, x, target)
    h_f = ds.fixed_point(two, x, None).layers
    h_l = ds.fixed_point(two, x, target).layers
    e_L = loss_gradient("mse", h[-1], y)
    L, ratios = len(sizes) - 1, []
    for i in range(1, L + 1):
        back = e_L
        for w in reversed(two.W[i:]):
            back = torch.linalg.solve(w, back.T).T           # prod J_g e_L = W^{-1}... e_L
        mine = p_f[i - 1] - p_l[i - 1]
        theirs = h_f[i - 1] - h_l[i - 1]
        np.testing.assert_allclose(mine.numpy(), eta_hat * back.numpy(), rtol=1e-6,
                                   atol=1e-12)
        ratios.append(float(mine.norm() / theirs.norm()))
        decay = ((1 - mu) / mu) ** (L + 1 - i)
        assert 0.7 * decay < ratios[-1] < 1.4 * decay, (i, ratios[-1], decay)
    assert ratios[0] > 1000                                 # layer 1: (0.9/0.1)^4 = 6561


def relative_signals(model, x, y, eta_hat, burst):
    """``||signal_i|| / ||eta_hat e_L||`` per layer: ``p^f_i - p^l_i`` (multiplexing) or
    ``h^f_i - h^l_i`` (two-phase), and the signals themselves."""
    target = Nudge(y, "mse", eta_hat)
    free = ds.fixed_point(model, x, None, tol=1e-13, max_iter=500)
    nudged = ds.fixed_point(model, x, target, tol=1e-13, max_iter=500)
    assert bool(free.converged.all()) and bool(nudged.converged.all())
    if burst:
        a = model.burst_probabilities(free.y, model.drive(x))
        b = model.burst_probabilities(nudged.y, model.drive(x, target))
    else:
        a, b = free.layers, nudged.layers
    size = float((eta_hat * loss_gradient("mse", free.layers[-1], y)).norm())
    return [float((u - v).norm()) / size for u, v in zip(a, b)], [u - v for u, v in zip(a, b)]


def test_defaults_have_no_depth_decay():
    """With its defaults (identity burst transfer, ``Q_i = (s'(0) W_{i+1})^+``) the feedback
    Jacobians invert the forward ones at the centre of the sigmoid: the layer-1 signal is
    (6.59), ``eta_hat Q_1 ... Q_{L-1} e_L``, no smaller than the top layer's and >= 10x the
    two-phase network's (its defaults, mu = 0.1, same forward weights); the earlier defaults
    (sigmoid burst transfer, ``Q = W^T``) decay (control)."""
    sizes, eta_hat = [6, 6, 6, 6, 6, 4], 1e-3
    g = torch.Generator().manual_seed(12)
    x = torch.rand(8, 6, generator=g, dtype=F64)
    y = torch.rand(8, 4, generator=g, dtype=F64)
    two = TwoPhaseDTP(sizes, mu=0.1, dtype=F64, seed=0)
    mux = Multiplexing(sizes, dtype=F64)
    old = Multiplexing(sizes, dtype=F64, **SIGMOID)
    # the undamped inverse Q_i = (s'(0) W_{i+1})^+ on another network's weights
    for model in (mux, old):
        model.params["W"] = [w.clone() for w in two.W]
    mux.params["Q"] = [torch.linalg.pinv(0.25 * w) for w in two.W[1:]]   # sigmoid'(0) = 1/4
    old.params["Q"] = [w.T.clone() for w in two.W[1:]]
    ours, signals = relative_signals(mux, x, y, eta_hat, burst=True)
    theirs, _ = relative_signals(two, x, y, eta_hat, burst=False)
    before, _ = relative_signals(old, x, y, eta_hat, burst=True)
    # independent: the chain is linear, p^f_1 - p^l_1 = eta_hat Q_1 ... Q_{L-1} e_L exactly
    h_L = ds.fixed_point(mux, x, None).layers[-1]
    back = eta_hat * loss_gradient("mse", h_L, y).numpy()
    for w in reversed(two.W[1:]):
        back = back @ np.linalg.pinv(0.25 * w.numpy()).T
    np.testing.assert_allclose(signals[0].numpy(), back, rtol=1e-7, atol=1e-14)
    assert ours[-1] == pytest.approx(1.0)
    assert 1.0 <= ours[0] <= 1e5, ours              # no decay; growth bounded by 1/s' ||W^+||
    assert ours[0] >= 10 * theirs[0], (ours, theirs)
    assert before[0] < 0.02 * before[-1], before    # the earlier defaults: t' <= 1/4 per layer


# ----------------------------------------------------------------------------------------------
# (d) plasticity
# ----------------------------------------------------------------------------------------------
def test_plasticity_rules_against_numpy():
    model = Multiplexing([5, 4, 3, 2], dtype=F64, eta=[0.3, 0.2, 0.1], eta_inv=0.05,
                         weight_decay=0.1, feedback_init="random", burst_transfer="sigmoid")
    x, target = batch(5), nudge(4, 2, eta_hat=0.5)
    eq, h, p_l = equilibrium(model, x, target)
    y = eq.y.clone()
    z = model.layout.variable_slice("z")
    y[:, z] += 0.05 * torch.randn(y[:, z].shape, generator=torch.Generator().manual_seed(8),
                                  dtype=F64)
    drive = model.drive(x, target)
    rates = model.plasticity(0.0, y, drive, model.params)
    zs = [v.numpy() for v in model.traces(y)]
    hs = [x.numpy()] + [v.numpy() for v in h]
    ps = [v.numpy() for v in p_l]
    for i in range(1, 4):
        d = hs[i] * (1 - hs[i])
        delta = d * (zs[i - 1] - ps[i - 1])
        np.testing.assert_allclose(rates["W"][i - 1].numpy(),
                                   -[0.3, 0.2, 0.1][i - 1] * delta.T @ hs[i - 1] / 4, atol=1e-14)
        np.testing.assert_allclose(rates["b"][i - 1].numpy(),
                                   -[0.3, 0.2, 0.1][i - 1] * delta.mean(0), atol=1e-14)
    for i in range(1, 3):
        d = ps[i - 1] * (1 - ps[i - 1])
        data = (d * (ps[i - 1] - hs[i])).T @ ps[i] / 4
        np.testing.assert_allclose(rates["Q"][i - 1].numpy(),
                                   -0.05 * (data + 0.1 * model.Q[i - 1].numpy()), atol=1e-14)
    off = model.plasticity(0.0, y, model.drive(x, target, gates=lambda t: {
        "plastic_W": 0.0, "plastic_Q": 0.0}), model.params)
    assert all(r is None for v in off.values() for r in v)


def mismatch(model, x, params=None):
    eq = ds.fixed_point(model, x, None, params=params)
    p = model.burst_probabilities(eq.y, model.drive(x))
    return [float((pi - hi).norm(dim=-1).mean()) for pi, hi in zip(p, eq.layers)]


def test_q_rule_drives_feedback_toward_an_inverse():
    model = Multiplexing([8, 6, 6, 4], dtype=F64, eta_inv=0.1, feedback_init="random",
                         burst_transfer="sigmoid")
    x = batch(8, B=32, seed=9)
    before = mismatch(model, x)
    sleep = Schedule([Phase("free", 20.0, teach=False, plastic=("Q",), trace=True)])
    params = model.params
    for _ in range(15):
        params = present(model, x, None, sleep, params=params, require_plastic=()).params
    after = mismatch(model, x, params)
    assert after[0] < 0.5 * before[0] and after[1] < 0.5 * before[1], (before, after)


def test_quasi_static_and_coupled_presentations_agree():
    model = Multiplexing([5, 4, 3, 2], dtype=F64, eta=0.01, eta_inv=0.0)
    x, target = batch(5), nudge(4, 2, eta_hat=0.5)
    sched = model.default_schedule(T_free=30.0, T_learn=30.0)
    qs = present(model, x, target, sched, "quasi_static")
    cp = present(model, x, target, sched, "coupled", rtol=1e-9, atol=1e-11)
    for a, b, w in zip(qs.params["W"], cp.params["W"], model.W):
        step = float((a - w).norm())
        assert step > 0 and float((a - b).norm()) < 0.15 * step   # transient ~ L tau / T


# ----------------------------------------------------------------------------------------------
# (e) synaptic decoding
# ----------------------------------------------------------------------------------------------
def test_fast_synapses_reproduce_perfect_decoding():
    x, target = batch(5, B=3), nudge(3, 2, eta_hat=0.5)
    perfect = Multiplexing([5, 4, 3, 2], dtype=F64, **SIGMOID)
    errors = []
    for tau in (0.1, 0.02):
        dec = Multiplexing([5, 4, 3, 2], dtype=F64, decoding=True, tau_depression=tau,
                           tau_facilitation=tau, eps=1e-9, **SIGMOID)
        # equilibria: the decoders read h and p h / (h + eps); tolerance ~ eps / min h
        _, h_d, p_d = equilibrium(dec, x, target)
        _, h_p, p_p = equilibrium(perfect, x, target)
        for a, b in zip(h_d + p_d, h_p + p_p):
            np.testing.assert_allclose(a.numpy(), b.numpy(), atol=1e-8)
        t = torch.linspace(0.0, 4.0, 9, dtype=F64)
        rates = [ds.simulate(m, x, t, target, rtol=1e-8, atol=1e-10) for m in (dec, perfect)]
        gap = max(float((a - b).abs().max()) for a, b in
                  zip(dec.layers(rates[0].y), perfect.layers(rates[1].y)))
        drive = [m.drive(x, target) for m in (dec, perfect)]
        gap_p = max(float((a - b).abs().max()) for a, b in
                    zip(dec.burst_probabilities(rates[0].y, drive[0]),
                        perfect.burst_probabilities(rates[1].y, drive[1])))
        errors.append(max(gap, gap_p))
    assert errors[1] < 2e-2 and errors[1] < 0.3 * errors[0], errors   # O(tau) convergence


def test_decoded_burst_probabilities_stay_in_unit_interval():
    dec = Multiplexing([5, 4, 3, 2], dtype=F64, decoding=True, tau_depression=3.0,
                       tau_facilitation=0.3, feedback_scale=4.0, **SIGMOID)
    x, target = batch(5, B=6), nudge(6, 2, eta_hat=2.0)
    # start from other inputs' equilibrium: large transients through slow decoders
    y0 = dec.initial_state(dec.drive(batch(5, B=6, seed=11)), dec.params)
    traj = ds.simulate(dec, x, torch.linspace(0, 10, 41, dtype=F64), target, y0=y0)
    parts = dec.layout.unpack(traj.y)
    apical = dec.synapses[1]
    for k in range(dec.depth - 1):
        decoded = apical.decode(parts, k)
        assert float(decoded.min()) >= 0.0 and float(decoded.max()) <= 1.0
    for p in dec.burst_probabilities(traj.y.reshape(-1, dec.state_size),
                                     dec.drive(x.repeat(41, 1), Nudge(target.y.repeat(41, 1),
                                                                       "mse", 2.0))):
        assert float(p.min()) >= 0.0 and float(p.max()) <= 1.0


def test_training_and_configuration():
    from dendrite_sim.frontend.config import build_model, load_config
    cfg = load_config("multiplexing", ["model.sizes=[64, 12, 10]"])
    model = build_model(cfg)
    assert isinstance(model, Multiplexing) and model.sizes == [64, 12, 10]
    from dendrite_sim.frontend.data import load_dataset
    from dendrite_sim.learning import DendriticLearner, train
    full = load_dataset("digits")
    data = dataclasses.replace(full, x_train=full.x_train[:400], y_train=full.y_train[:400])
    learner = DendriticLearner(model, loss="mse", eta_hat=0.5)
    hist = train(learner, data, epochs=1, batch_size=32, progress=False,
                 diagnostics_every=0, max_eval=300)
    assert hist.test_loss[-1] < 0.6 * hist.test_loss[0]


# ----------------------------------------------------------------------------------------------
# (f) bad input
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, name", [
    (dict(decoding=True, burst_transfer="tanh"), "burst_transfer"),
    (dict(decoding=True, transfer="leaky_relu"), "transfer"),
    (dict(tau_basal=0.0), "tau_basal"),
    (dict(tau_apical=-1.0), "tau_apical"),
    (dict(trace_tau=0.0), "trace_tau"),
    (dict(decoding=True, tau_facilitation=0.0), "tau_facilitation"),
    (dict(tau_depression=-2.0), "tau_depression"),
    (dict(transfer=["sigmoid", "sigmoid"]), "transfer"),
    (dict(burst_transfer=["sigmoid"] * 3), "burst_transfer"),
    (dict(eta=[0.1, 0.1]), "eta"),
    (dict(feedback_init="exact"), "feedback_init"),
])
def test_bad_parameters_raise(kwargs, name):
    with pytest.raises(ValueError, match=name):
        Multiplexing([5, 4, 3, 2], **kwargs)


def test_bad_sizes_and_inputs_raise():
    with pytest.raises(ValueError, match="sizes"):
        Multiplexing([5])
    model = Multiplexing([5, 4, 2], dtype=F64)
    with pytest.raises(ValueError, match=r"x must have shape \(batch, 5\)"):
        ds.fixed_point(model, torch.zeros(3, 4, dtype=F64), None)
    with pytest.raises(ValueError, match="target"):
        ds.fixed_point(model, torch.zeros(3, 5, dtype=F64),
                       Nudge(torch.zeros(3, 3, dtype=F64), "mse", 0.1))


def test_damped_inverse_feedback_against_its_closed_form():
    """``feedback_init="damped"``: ``Q_i = J^T (J J^T + lambda I)^{-1}``, ``J = s'(0) W_{i+1}``,
    ``lambda = c ||J||_2^2`` (numpy solve); every direction's gain at most ``1/(2 sqrt
    lambda)``; ``c -> 0`` gives the pseudo-inverse (the ``"inverse"`` default)."""
    import numpy as np
    from dendrite_sim.models.multiplexing import damped_inverse
    sizes = [5, 7, 7, 3]
    m = Multiplexing(sizes, transfer=["tanh", "tanh", "sigmoid"], feedback_init="damped",
                     feedback_damping=0.2, dtype=torch.float64, seed=4)
    for i, (q, w) in enumerate(zip(m.params["Q"], m.params["W"][1:])):
        J = (0.25 if i == len(sizes) - 3 else 1.0) * w.numpy()
        lam = 0.2 * np.linalg.norm(J, 2) ** 2
        expected = J.T @ np.linalg.solve(J @ J.T + lam * np.eye(J.shape[0]), np.eye(J.shape[0]))
        np.testing.assert_allclose(q.numpy(), expected, rtol=1e-10, atol=1e-12)
        assert np.linalg.norm(q.numpy(), 2) <= 1 / (2 * np.sqrt(lam)) * (1 + 1e-12)
    J = torch.randn(6, 6, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(damped_inverse(J, 1e-14), torch.linalg.pinv(J), rtol=1e-6,
                               atol=1e-8)
    with pytest.raises(ValueError, match="feedback_damping"):
        Multiplexing([4, 4, 4], feedback_init="damped", feedback_damping=0.0)
