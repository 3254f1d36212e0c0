"""Mixture model dynamics (SPEC §2.1, thesis §6.3-6.5) against independent computations.

The reference is a plain numpy re-implementation of (6.1) written from the SPEC equations:

    tau dh_i/dt = -h_i + (1-mu) f_i(h_{i-1}) + mu g_i(h_{i+1}),   f_i(h) = s(W_i h + b_i)
    exact:    g_i(y) = W_{i+1}^{-1} (s^{-1}(y) - b_{i+1})          (numpy.linalg.solve)
    learned:  g_i(y) = Q_i (s^{-1}(y) - b_{i+1})  (inverse form),  s(Q_i y) (classic form)
    g_L = h_L (free) | y (clamp) | h_L - eta_hat dLoss/dh_L (nudge; mse: h_L - y,
          cross-entropy: softmax(h_L) - onehot)

integrated with ``scipy.integrate.solve_ivp`` (DOP853). Only the parameter *values*
(``W``, ``b``, ``Q``) are read from the model.

Exact algebra used below (derived from the fixed-point equation h = (1-mu) f + mu g, no
approximation): with d_i = h*_i - f_i(h*_{i-1}),

    (1-mu) d_i = mu (g_i(h*_{i+1}) - h*_i)                                           (A)

For exact inverses, g_i(h*_{i+1}) - h*_i = f_{i+1}^{-1}(f_{i+1}(h*_i) + d_{i+1}) - h*_i, which
for a piecewise-linear s equals J_{f_{i+1}}^{-1} d_{i+1} exactly as long as no unit crosses
the kink between a_{i+1} = W_{i+1} h*_i + b_{i+1} and s^{-1}(h*_{i+1}). Then (6.12)-(6.16)
hold *exactly*; for smooth s the remainder is second order in d_{i+1} (i.e. in eta_hat).
"""
import numpy as np
import pytest
import torch
from scipy.integrate import solve_ivp

import dendrite_sim as ds
from dendrite_sim.models import Mixture

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# independent numpy reference
# ----------------------------------------------------------------------------------------------
def s_np(name, a, slope):
    if name == "identity":
        return a
    if name == "leaky_relu":
        return np.where(a >= 0, a, slope * a)
    if name == "tanh":
        return np.tanh(a)
    raise AssertionError(name)


def sinv_np(name, y, slope):
    if name == "identity":
        return y
    if name == "leaky_relu":
        return np.where(y >= 0, y, y / slope)
    if name == "tanh":
        return np.arctanh(y)
    raise AssertionError(name)


def ds_np(name, a, slope):
    """s'(a)."""
    if name == "identity":
        return np.ones_like(a)
    if name == "leaky_relu":
        return np.where(a >= 0, 1.0, slope)
    if name == "tanh":
        return 1.0 - np.tanh(a) ** 2
    raise AssertionError(name)


class NumpyMixture:
    """(6.1) in numpy for a batch of states ``(B, N)``; parameters copied from a model."""

    def __init__(self, model, transfer, slope, feedback, form="inverse"):
        self.sizes = list(model.sizes)
        self.L = len(self.sizes) - 1
        self.mu, self.tau = float(model.mu), float(model.tau)
        self.transfer, self.slope = transfer, slope
        self.feedback, self.form = feedback, form
        self.W = [w.detach().numpy().copy() for w in model.params["W"]]
        self.b = [np.zeros(n) if b is None else b.detach().numpy().copy()
                  for b, n in zip(model.params["b"], self.sizes[1:])]
        self.Q = None if model.params.get("Q") is None else \
            [q.detach().numpy().copy() for q in model.params["Q"]]

    def split(self, y):
        out, k = [], 0
        for n in self.sizes[1:]:
            out.append(y[:, k:k + n])
            k += n
        return out

    def s(self, a):
        return s_np(self.transfer, a, self.slope)

    def sinv(self, y):
        return sinv_np(self.transfer, y, self.slope)

    def pre(self, i, h_prev):
        """a_i = W_i h_{i-1} + b_i, layers i = 1..L."""
        return h_prev @ self.W[i - 1].T + self.b[i - 1]

    def f(self, i, h_prev):
        return self.s(self.pre(i, h_prev))

    def g(self, i, y):
        """g_i(h_{i+1}) for i = 1..L-1."""
        if self.feedback == "exact":
            u = self.sinv(y) - self.b[i]
            return np.linalg.solve(self.W[i], u.T).T
        if self.form == "classic":
            return self.s(y @ self.Q[i - 1].T)
        return (self.sinv(y) - self.b[i]) @ self.Q[i - 1].T

    def top(self, h_L, teach):
        kind = teach[0]
        if kind == "free":
            return h_L
        if kind == "clamp":
            return teach[1]
        _, y, loss, eta = teach
        if loss == "mse":
            grad = h_L - y
        else:
            z = h_L - h_L.max(-1, keepdims=True)
            p = np.exp(z) / np.exp(z).sum(-1, keepdims=True)
            grad = p - y
        return h_L - eta * grad

    def field(self, x, y, teach):
        h = [x] + self.split(y)
        out = []
        for i in range(1, self.L + 1):
            g = self.g(i, h[i + 1]) if i < self.L else self.top(h[i], teach)
            out.append((-h[i] + (1 - self.mu) * self.f(i, h[i - 1]) + self.mu * g) / self.tau)
        return np.concatenate(out, axis=-1)

    def forward_pass(self, x):
        h = [x]
        for i in range(1, self.L + 1):
            h.append(self.f(i, h[-1]))
        return h[1:]

    def solve(self, x, y0, t_eval, teach):
        B, N = y0.shape
        fun = lambda t, v: self.field(x, v.reshape(B, N), teach).ravel()  # noqa: E731
        sol = solve_ivp(fun, (t_eval[0], t_eval[-1]), y0.ravel(), method="DOP853",
                        t_eval=t_eval, rtol=1e-10, atol=1e-12)
        assert sol.success, sol.message
        return sol.y.T.reshape(len(t_eval), B, N)


def make_model(sizes, transfer, feedback, bias, seed, mu=0.1, tau=1.0, slope=0.2,
               form="inverse", q_noise=0.0):
    m = Mixture(sizes, mu=mu, tau=tau, feedback=feedback, transfer=transfer, slope=slope,
                bias=bias, seed=seed, dtype=F64, form=form)
    gen = torch.Generator().manual_seed(1000 + seed)
    if bias:
        for k, b in enumerate(m.params["b"]):
            m.params["b"][k] = 0.2 * torch.randn(b.shape, generator=gen, dtype=F64)
    if feedback == "learned" and q_noise:
        for k, q in enumerate(m.params["Q"]):
            m.params["Q"][k] = q + q_noise * torch.randn(q.shape, generator=gen, dtype=F64) \
                / q.shape[1] ** 0.5
    return m


def teaching(kind, sizes, B, transfer, rng, eta=0.5):
    """(engine target, numpy description) of a teaching mode."""
    nL = sizes[-1]
    if kind == "free":
        return None, ("free",)
    if kind == "clamp":
        y = 0.4 * np.tanh(rng.standard_normal((B, nL)))
        return torch.tensor(y), ("clamp", y)
    if kind == "mse":
        y = 0.4 * np.tanh(rng.standard_normal((B, nL)))
        return ds.Nudge(torch.tensor(y), loss="mse", eta_hat=eta), ("nudge", y, "mse", eta)
    labels = rng.integers(0, nL, size=B)
    onehot = np.eye(nL)[labels]
    return (ds.Nudge(torch.tensor(labels), loss="cross_entropy", eta_hat=eta),
            ("nudge", onehot, "ce", eta))


# ----------------------------------------------------------------------------------------------
# trajectories vs solve_ivp
# ----------------------------------------------------------------------------------------------
TRAJ_CASES = [
    # sizes,            transfer,     feedback,  bias,  teach,   form,      tau
    ([4, 4, 4, 4], "leaky_relu", "exact", False, "free", "inverse", 1.0),
    ([4, 4, 4, 4], "leaky_relu", "exact", True, "clamp", "inverse", 1.0),
    ([4, 4, 4, 4], "leaky_relu", "exact", True, "mse", "inverse", 0.5),
    ([4, 4, 4, 4], "tanh", "exact", True, "mse", "inverse", 1.0),
    ([4, 4, 4, 4], "tanh", "exact", False, "ce", "inverse", 1.0),
    ([4, 4, 4, 4], "tanh", "exact", False, "free", "inverse", 2.0),
    ([3, 3, 3], "identity", "exact", True, "clamp", "inverse", 1.0),
    ([5, 4, 3, 2], "leaky_relu", "learned", True, "mse", "inverse", 1.0),
    ([5, 4, 3, 2], "leaky_relu", "learned", False, "free", "inverse", 1.0),
    ([5, 4, 3, 2], "tanh", "learned", False, "clamp", "inverse", 1.0),
    ([5, 4, 3, 2], "tanh", "learned", True, "mse", "inverse", 1.0),
    ([3, 5, 4, 3], "tanh", "learned", True, "mse", "classic", 1.0),
]


@pytest.mark.parametrize("sizes,transfer,feedback,bias,teach,form,tau", TRAJ_CASES)
def test_trajectory_matches_solve_ivp(sizes, transfer, feedback, bias, teach, form, tau):
    seed = len(sizes) * 7 + sizes[1] + (3 if bias else 0)
    rng = np.random.default_rng(seed)
    B = 3
    model = make_model(sizes, transfer, feedback, bias, seed, mu=0.2, tau=tau, form=form,
                       q_noise=0.3)
    ref = NumpyMixture(model, transfer, 0.2, feedback, form)
    x = 0.5 * rng.standard_normal((B, sizes[0]))
    # start away from the equilibrium so that every term of (6.1) acts
    y0 = np.concatenate(ref.forward_pass(x), axis=-1)
    y0 = y0 + 0.15 * rng.standard_normal(y0.shape)
    if transfer == "tanh":
        y0 = np.clip(y0, -0.9, 0.9)
    target, teach_np = teaching(teach, sizes, B, transfer, rng)
    # cross-entropy: torch.softmax on tiny tensors is slow with 2 threads, keep it short
    t = np.linspace(0.0, (2.0 if teach == "ce" else 4.0) * tau, 9)
    want = ref.solve(x, y0, t, teach_np)
    if transfer == "tanh":  # the reference stayed inside the domain of atanh
        assert np.abs(want[..., sizes[1]:]).max() < 1
    got = ds.simulate(model, torch.tensor(x), torch.tensor(t), target=target, method="dopri5",
                      rtol=1e-10, atol=1e-12, y0=torch.tensor(y0))
    assert torch.allclose(got.t, torch.tensor(t))
    assert [tuple(l.shape) for l in got.layers] == [(len(t), B, n) for n in sizes[1:]]
    got_y = torch.cat(got.layers, dim=-1).numpy()
    # both solvers run at rtol 1e-10 / atol 1e-12 on a contracting system over a few time
    # constants: each global error is ~1e-9, so 1e-6 has 3 orders of margin, while any wrong
    # term (mu vs 1-mu, a missing bias or tau, a transposed W) changes the state by >= 1e-2.
    np.testing.assert_allclose(got_y, want, rtol=0, atol=1e-6)
    assert np.abs(want[-1] - want[0]).max() > 1e-2  # the trajectory is not trivial


def test_float32_trajectory_matches_reference_loosely():
    """float32 model: same equations, accuracy limited by single precision (~1e-5)."""
    rng = np.random.default_rng(5)
    m = Mixture([4, 4, 4], mu=0.2, feedback="exact", transfer="leaky_relu", slope=0.2, seed=5)
    m64 = Mixture([4, 4, 4], mu=0.2, feedback="exact", transfer="leaky_relu", slope=0.2,
                  seed=5, dtype=F64)
    ref = NumpyMixture(m64, "leaky_relu", 0.2, "exact")
    x = 0.5 * rng.standard_normal((2, 4))
    y0 = np.concatenate(ref.forward_pass(x), -1) + 0.2 * rng.standard_normal((2, 8))
    yc = 0.3 * rng.standard_normal((2, 4))
    t = np.linspace(0, 3, 4)
    want = ref.solve(x, y0, t, ("clamp", yc))
    got = ds.simulate(m, torch.tensor(x, dtype=torch.float32), torch.tensor(t),
                      target=torch.tensor(yc, dtype=torch.float32),
                      y0=torch.tensor(y0, dtype=torch.float32), rtol=1e-6, atol=1e-7)
    assert got.layers[0].dtype == torch.float32
    # float32 weights differ from float64 ones by ~6e-8 relative, the solver rtol is 1e-6
    np.testing.assert_allclose(torch.cat(got.layers, -1).numpy(), want, atol=2e-5)


# ----------------------------------------------------------------------------------------------
# free mode: equilibrium = forward pass (§6.4)
# ----------------------------------------------------------------------------------------------
def free_mode_slowest_rate(L, mu):
    """Slowest decay rate (per tau) of the free-mode linearisation with exact inverses.

    By the similarity transform of test_jacobian.py the spectrum is that of the L x L matrix
    tridiag(1-mu, -1, mu) with its last diagonal entry -(1-mu) (g_L = h_L), independent of W.
    """
    T = -np.eye(L) + (1 - mu) * np.eye(L, k=-1) + mu * np.eye(L, k=1)
    T[-1, -1] = -(1 - mu)
    return -np.linalg.eigvals(T).real.max()


@pytest.mark.parametrize("transfer,bias", [("leaky_relu", True), ("tanh", True),
                                           ("identity", False), ("leaky_relu", False)])
def test_free_equilibrium_is_forward_pass(transfer, bias):
    rng = np.random.default_rng(11)
    sizes, mu, B = [4, 4, 4, 4], 0.2, 3
    model = make_model(sizes, transfer, "exact", bias, seed=11, mu=mu)
    ref = NumpyMixture(model, transfer, 0.2, "exact")
    x = 0.5 * rng.standard_normal((B, 4))
    fwd = ref.forward_pass(x)
    start = np.concatenate(fwd, -1) + 0.02 * rng.standard_normal((B, 12))
    eq = ds.fixed_point(model, torch.tensor(x), y0=torch.tensor(start))
    assert bool(eq.converged.all()) and float(eq.residual.max()) < 1e-10
    # Newton on a well-conditioned system (eigenvalues in (-2, 0)): error ~ residual ~ 1e-10
    for got, want in zip(eq.layers, fwd):
        np.testing.assert_allclose(got.numpy(), want, rtol=0, atol=1e-9)
    # and by integration from the perturbed start: after 30 / (slowest rate) the transient
    # (amplitude <= ~1 including non-normal growth) is below e^-30 ~ 1e-13
    horizon = 30.0 / free_mode_slowest_rate(len(sizes) - 1, mu)
    tr = ds.simulate(model, torch.tensor(x), [0.0, horizon], rtol=1e-11, atol=1e-13,
                     y0=torch.tensor(start))
    for got, want in zip(tr.layers, fwd):
        np.testing.assert_allclose(got[-1].numpy(), want, rtol=0, atol=1e-9)


def test_free_equilibrium_with_learned_feedback_is_not_forward_pass():
    """Negative control: with approximate inverses the free equilibrium deviates (§6.5)."""
    rng = np.random.default_rng(12)
    model = make_model([4, 4, 4, 4], "leaky_relu", "learned", False, seed=12, mu=0.2,
                       q_noise=0.3)
    ref = NumpyMixture(model, "leaky_relu", 0.2, "learned")
    x = 0.5 * rng.standard_normal((3, 4))
    eq = ds.fixed_point(model, torch.tensor(x))
    assert bool(eq.converged.all())
    dev = max(np.abs(g.numpy() - w).max() for g, w in zip(eq.layers, ref.forward_pass(x)))
    assert dev > 1e-3
    # it is nevertheless an equilibrium of the numpy field
    y = torch.cat(eq.layers, -1).numpy()
    assert np.abs(ref.field(x, y, ("free",))).max() < 1e-9


# ----------------------------------------------------------------------------------------------
# fixed_point vs long simulation
# ----------------------------------------------------------------------------------------------
def _fd_jacobian(ref, x, y, teach, h=1e-6):
    """Central-difference Jacobian of the numpy field for one example (y of shape (1, N))."""
    N = y.shape[1]
    J = np.empty((N, N))
    for k in range(N):
        e = np.zeros((1, N))
        e[0, k] = h
        J[:, k] = (ref.field(x, y + e, teach) - ref.field(x, y - e, teach))[0] / (2 * h)
    return J


@pytest.mark.parametrize("sizes,transfer,feedback,teach", [
    ([4, 4, 4, 4], "tanh", "exact", "mse"),
    ([5, 4, 3, 2], "leaky_relu", "learned", "mse"),
    ([5, 4, 3, 2], "tanh", "learned", "clamp"),
])
def test_fixed_point_matches_long_simulation(sizes, transfer, feedback, teach):
    rng = np.random.default_rng(21)
    B = 3
    model = make_model(sizes, transfer, feedback, True, seed=21, mu=0.25, tau=0.8, q_noise=0.2)
    ref = NumpyMixture(model, transfer, 0.2, feedback)
    x = 0.5 * rng.standard_normal((B, sizes[0]))
    target, teach_np = teaching(teach, sizes, B, transfer, rng)
    eq = ds.fixed_point(model, torch.tensor(x), target=target)
    assert eq.residual.shape == (B,) and eq.converged.shape == (B,)
    assert bool(eq.converged.all())
    y_eq = torch.cat(eq.layers, -1).numpy()
    # independent residual: the numpy field vanishes there
    assert np.abs(ref.field(x, y_eq, teach_np)).max() < 1e-9
    # the residual the engine reports is max |dy/dt| (its doc) -- check it is honest
    np.testing.assert_allclose(eq.residual.numpy(),
                               np.abs(ref.field(x, y_eq, teach_np)).max(-1), atol=1e-12)
    # horizon: 25 / (slowest decay rate of the numpy finite-difference Jacobian at y_eq)
    J = _fd_jacobian(ref, x[:1], y_eq[:1], (teach_np[0],) + tuple(
        v[:1] if isinstance(v, np.ndarray) else v for v in teach_np[1:]))
    rate = -np.linalg.eigvals(J).real.max()
    assert rate > 0.05
    tr = ds.simulate(model, torch.tensor(x), [0.0, 25.0 / rate], target=target, rtol=1e-11,
                     atol=1e-13)
    y_sim = torch.cat(tr.layers, -1)[-1].numpy()
    # transient after 25 e-foldings of the slowest mode: e^-25 ~ 1e-11 times its amplitude
    np.testing.assert_allclose(y_eq, y_sim, rtol=0, atol=1e-8)


def test_fixed_point_cross_entropy_nudge_is_root_of_numpy_field():
    rng = np.random.default_rng(22)
    sizes = [5, 4, 3, 3]
    model = make_model(sizes, "leaky_relu", "learned", True, seed=22, mu=0.3, q_noise=0.2)
    ref = NumpyMixture(model, "leaky_relu", 0.2, "learned")
    x = rng.standard_normal((3, 5))
    target, teach_np = teaching("ce", sizes, 3, "leaky_relu", rng, eta=1.0)
    eq = ds.fixed_point(model, torch.tensor(x), target=target)
    assert bool(eq.converged.all())
    y_eq = torch.cat(eq.layers, -1).numpy()
    assert np.abs(ref.field(x, y_eq, teach_np)).max() < 1e-9
    # the nudge moved the output toward the label: its softmax probability increased
    free = ds.fixed_point(model, torch.tensor(x))
    p = lambda h: np.exp(h) / np.exp(h).sum(-1, keepdims=True)  # noqa: E731
    onehot = teach_np[1]
    assert np.all((p(eq.layers[-1].numpy()) * onehot).sum(-1)
                  > (p(free.layers[-1].numpy()) * onehot).sum(-1))


# ----------------------------------------------------------------------------------------------
# (6.12)-(6.16): the output error travels down scaled by (mu/(1-mu))^(L+1-i)
# ----------------------------------------------------------------------------------------------
def _deviations(ref, x, layers):
    h = [x] + layers
    return [h[i] - ref.f(i, h[i - 1]) for i in range(1, ref.L + 1)]


def _jf_inverse_times(ref, i, h_prev, v):
    """J_{f_i}^{-1} v per example, J_{f_i} = D_{s_i}(W_i h_{i-1} + b_i) W_i."""
    D = ds_np(ref.transfer, ref.pre(i, h_prev), ref.slope)
    return np.stack([np.linalg.solve(D[b][:, None] * ref.W[i - 1], v[b])
                     for b in range(v.shape[0])])


def _predicted_616(ref, x, layers, e_L, eta):
    """-eta (mu/(1-mu))^(L+1-i) [prod_{k=i}^{L-1} J_{f_{k+1}}^{-1}] e_L, J at h*_k."""
    h = [x] + layers
    r = ref.mu / (1 - ref.mu)
    preds = [-eta * r * e_L]  # i = L: (6.12)
    for i in range(ref.L - 1, 0, -1):
        preds.insert(0, r * _jf_inverse_times(ref, i + 1, h[i], preds[0]))
    return preds


def _no_kink_crossed(ref, x, layers):
    """For every layer whose inverse is used (2..L): sign(s^{-1}(h*)) == sign(a) unit-wise,
    i.e. the pre-activation a_i = W_i h*_{i-1} + b_i and the value the exact inverse
    reconstructs from h*_i lie on the same linear piece of the leaky ReLU."""
    h = [x] + layers
    return all(np.array_equal(np.sign(ref.pre(i, h[i - 1])), np.sign(h[i]))
               for i in range(2, ref.L + 1))


def _set_orthogonal_weights(model, seed):
    """Replace every W_i by a random orthogonal matrix (||W|| = ||W^{-1}|| = 1)."""
    gen = torch.Generator().manual_seed(seed)
    for k, w in enumerate(model.params["W"]):
        q, r = torch.linalg.qr(torch.randn(w.shape, generator=gen, dtype=F64))
        model.params["W"][k] = q * torch.sign(torch.diagonal(r))


@pytest.mark.parametrize("mu,eta", [(0.1, 0.05), (0.05, 0.05), (0.3, 0.01)])
def test_nudged_deviation_follows_6_16_exactly_for_leaky_relu(mu, eta, capsys):
    """Leaky ReLU, exact inverses, no kink crossed: (6.16) holds exactly (module docstring),
    so the only error is the accuracy of the equilibrium. With ``tol=1e-13`` the state is
    correct to ~1e-13 and the smallest deviation (layer 1) is ~eta (mu/(1-mu))^L |J^-1|^(L-1)
    |e| >= 1e-5, so a relative tolerance of 1e-6 leaves >= 1 order of margin; an O(mu) error in
    the scaling (e.g. mu^k instead of (mu/(1-mu))^k) would show as >= 5 % error."""
    rng = np.random.default_rng(31)
    sizes, B = [6, 6, 6, 6, 6], 4
    L = len(sizes) - 1
    model = make_model(sizes, "leaky_relu", "exact", True, seed=31, mu=mu, slope=0.2)
    ref = NumpyMixture(model, "leaky_relu", 0.2, "exact")
    x = rng.standard_normal((B, 6))
    y = rng.standard_normal((B, 6))
    eq = ds.fixed_point(model, torch.tensor(x), target=ds.Nudge(torch.tensor(y), "mse", eta),
                        tol=1e-13)
    assert bool(eq.converged.all())
    layers = [l.numpy() for l in eq.layers]
    assert _no_kink_crossed(ref, x, layers)
    d = _deviations(ref, x, layers)
    e_L = layers[-1] - y  # dLoss/dh_L of 1/2||h-y||^2 at h*_L
    r = mu / (1 - mu)
    # (6.12): exact for any transfer
    np.testing.assert_allclose(d[-1], -r * eta * e_L, rtol=1e-9, atol=1e-14)
    pred = _predicted_616(ref, x, layers, e_L, eta)
    rel = [np.linalg.norm(d[i] - pred[i]) / np.linalg.norm(pred[i]) for i in range(L)]
    with capsys.disabled():
        print(f"\n(6.16) leaky-relu mu={mu} eta_hat={eta}: relative error per layer 1..L = "
              + ", ".join(f"{v:.1e}" for v in rel)
              + " | |d_i| = " + ", ".join(f"{np.linalg.norm(v):.2e}" for v in d))
    assert max(rel) < 1e-6
    # decay across layers: ||d_i|| = mu/(1-mu) ||J_{f_{i+1}}^{-1} d_{i+1}||, per example
    h = [x] + layers
    for i in range(1, L):
        back = _jf_inverse_times(ref, i + 1, h[i], d[i])
        np.testing.assert_allclose(np.linalg.norm(d[i - 1], axis=-1)
                                   / np.linalg.norm(back, axis=-1), r, rtol=1e-6)


@pytest.mark.parametrize("mu", [0.05, 0.1, 0.2, 0.4])
def test_deviation_decays_as_power_of_mu_ratio_with_orthogonal_layers(mu):
    """Identity transfer, orthogonal W: every Jacobian factor preserves norms, so (6.16) reads
    ||d_i|| = eta (mu/(1-mu))^(L+1-i) ||e_L|| exactly -- the raw layer-to-layer ratio of
    deviation norms is mu/(1-mu). Tolerance: only rounding and the 1e-13 residual enter."""
    rng = np.random.default_rng(32)
    sizes, B, eta = [5, 5, 5, 5, 5], 3, 0.2
    L = len(sizes) - 1
    model = make_model(sizes, "identity", "exact", True, seed=32, mu=mu)
    _set_orthogonal_weights(model, 32)
    ref = NumpyMixture(model, "identity", 0.2, "exact")
    x, y = rng.standard_normal((B, 5)), rng.standard_normal((B, 5))
    eq = ds.fixed_point(model, torch.tensor(x), target=ds.Nudge(torch.tensor(y), "mse", eta),
                        tol=1e-13)
    assert bool(eq.converged.all())
    layers = [l.numpy() for l in eq.layers]
    norms = np.stack([np.linalg.norm(v, axis=-1) for v in _deviations(ref, x, layers)])
    r = mu / (1 - mu)
    e_norm = np.linalg.norm(layers[-1] - y, axis=-1)
    expected = np.stack([eta * r ** (L + 1 - i) * e_norm for i in range(1, L + 1)])
    np.testing.assert_allclose(norms, expected, rtol=1e-6)
    np.testing.assert_allclose(norms[:-1] / norms[1:], r, rtol=1e-6)


def test_nudged_deviation_follows_6_16_to_first_order_for_tanh(capsys):
    """Smooth transfer (tanh): (6.16) is first order. The neglected term of each step is
    mu/(1-mu) * O(|J^{-1}|^2 |s''/s'| |d_{i+1}|^2), i.e. a relative error O(|d|) = O(eta_hat)
    (it also shrinks with mu through |d| ~ mu/(1-mu) eta_hat): it must be small for small
    eta_hat and halve when eta_hat halves; (6.12) for the top layer stays exact."""
    rng = np.random.default_rng(41)
    sizes, B, mu = [5, 5, 5, 5], 4, 0.1
    L = len(sizes) - 1
    model = make_model(sizes, "tanh", "exact", True, seed=41, mu=mu)
    ref = NumpyMixture(model, "tanh", 0.2, "exact")
    x = 0.6 * rng.standard_normal((B, 5))
    y = 0.5 * np.tanh(rng.standard_normal((B, 5)))
    errs = {}
    for eta in (0.1, 0.05, 0.025):
        eq = ds.fixed_point(model, torch.tensor(x), target=ds.Nudge(torch.tensor(y), "mse", eta),
                            tol=1e-13)
        assert bool(eq.converged.all())
        layers = [l.numpy() for l in eq.layers]
        d = _deviations(ref, x, layers)
        pred = _predicted_616(ref, x, layers, layers[-1] - y, eta)
        errs[eta] = [np.linalg.norm(d[i] - pred[i]) / np.linalg.norm(pred[i]) for i in range(L)]
    with capsys.disabled():
        for eta, e in errs.items():
            print(f"\n(6.16) tanh mu={mu} eta_hat={eta}: relative error per layer 1..L = "
                  + ", ".join(f"{v:.2e}" for v in e), end="")
        print()
    assert max(e[-1] for e in errs.values()) < 1e-9   # (6.12), exact
    assert max(errs[0.025]) < 2e-2                      # small for small eta_hat
    for i in range(L - 1):                              # first order: error ~ eta_hat
        assert errs[0.05][i] / errs[0.025][i] == pytest.approx(2.0, rel=0.1)
        assert errs[0.1][i] / errs[0.05][i] == pytest.approx(2.0, rel=0.1)


# ----------------------------------------------------------------------------------------------
# (6.20)-(6.22): approximate inverses, reconstruction errors at scale mu/(1-mu)
# ----------------------------------------------------------------------------------------------
def _learned_network(mu, eps=0.05, seed=51):
    """L = 4, width 5, orthogonal W (Jacobian factors O(1)), leaky ReLU slope 0.5, biases,
    Q_i = W_{i+1}^{-1} + eps P_i with P_i Gaussian of unit scale (||eps P|| ~ 2 eps)."""
    model = make_model([5] * 5, "leaky_relu", "learned", True, seed=seed, mu=mu, slope=0.5)
    _set_orthogonal_weights(model, seed)
    gen = torch.Generator().manual_seed(seed + 1)
    for k in range(model.depth - 1):
        P = torch.randn(5, 5, generator=gen, dtype=F64) / 5 ** 0.5
        model.params["Q"][k] = torch.linalg.inv(model.params["W"][k + 1]) + eps * P
    return model, NumpyMixture(model, "leaky_relu", 0.5, "learned")


def _recon_first_term(ref, h):
    """R_i = mu/(1-mu) (g_i(f_{i+1}(h_i)) - h_i) for i = 1..L-1, h = [x, h_1, ..., h_L]."""
    r = ref.mu / (1 - ref.mu)
    return [r * (ref.g(i, ref.f(i + 1, h[i])) - h[i]) for i in range(1, ref.L)]


@pytest.mark.parametrize("mu", [0.1, 0.02])
def test_free_deviation_is_reconstruction_error_6_20(mu, capsys):
    """Free mode, approximate inverses. From (A) in the module docstring:
    * top layer: d_L = 0 exactly (g_L = h_L);
    * layer L-1: d_{L-1} = R_{L-1} exactly (6.30);
    * every layer: d_i = R_i + mu/(1-mu) J_{g_i} d_{i+1}, J_{g_i} = Q_i D_{s_{i+1}}^{-1}(a_{i+1})
      -- exact for the piecewise-linear g when no kink is crossed (checked);
    * hence d_i agrees with the first term R_i of (6.20) to first order: the remainder is
      mu/(1-mu) |J_g d_{i+1}| / |R_i| = O(mu) relative -- asserted below 1.5 * mu/(1-mu) *
      ||Q|| / slope * |d_{i+1}| / |R_i| (operator-norm bound, ||D^-1|| <= 1/slope) and checked
      to shrink with mu."""
    rng = np.random.default_rng(52)
    model, ref = _learned_network(mu)
    L, r = ref.L, mu / (1 - mu)
    x = rng.standard_normal((4, 5))
    free = ds.fixed_point(model, torch.tensor(x), tol=1e-13)
    assert bool(free.converged.all())
    hf = [x] + [l.numpy() for l in free.layers]
    d = _deviations(ref, x, hf[1:])
    R = _recon_first_term(ref, hf)
    assert np.abs(d[-1]).max() < 1e-13
    np.testing.assert_allclose(d[L - 2], R[L - 2], rtol=1e-9, atol=1e-14)
    assert _no_kink_crossed(ref, x, hf[1:])
    rel = []
    for i in range(1, L - 1):
        D = ds_np("leaky_relu", ref.pre(i + 1, hf[i]), 0.5)
        Jg_d = (d[i] / D) @ ref.Q[i - 1].T
        # the exact recursion: tolerance = rounding of O(1) states (1e-13) against |d| ~ 1e-3
        np.testing.assert_allclose(d[i - 1], R[i - 1] + r * Jg_d, rtol=1e-8, atol=1e-13)
        rel_i = np.linalg.norm(d[i - 1] - R[i - 1]) / np.linalg.norm(R[i - 1])
        bound = 1.5 * r * np.linalg.norm(ref.Q[i - 1], 2) / 0.5 \
            * np.linalg.norm(d[i]) / np.linalg.norm(R[i - 1])
        assert rel_i <= bound
        rel.append(rel_i)
    with capsys.disabled():
        print(f"\n(6.20) mu={mu}: |d_i - R_i| / |R_i| for layers 1..{L - 2} = "
              + ", ".join(f"{v:.3f}" for v in rel) + f"  (mu/(1-mu) = {r:.3f})")
    assert max(rel) < 3 * r


def test_learned_inverse_reconstruction_errors_swamp_signal(capsys):
    """(6.22): with Q = W^{-1} + eps P (mu = 0.1, eta_hat = 0.1, L = 4, orthogonal W), compare
    in layer 1 the nudge-induced change of the deviation (useful signal, scale
    eta (mu/(1-mu))^L |J_g|^(L-1) |e_L|) with the free-mode deviation (reconstruction errors,
    scale mu/(1-mu) |Q - W^-1| |h|):
    * the ratio signal / reconstruction is small (< 0.1; measured 3.5e-2 at eps = 0.05);
    * the reconstruction part is first order in eps: doubling eps doubles it (+-10 %), while
      the signal stays put (+-10 %), so the ratio halves;
    * the signal equals the (6.22) last term -eta (mu/(1-mu))^L [prod J_{g_k}] e_L (within 5 %:
      the difference between the free and nudged reconstruction terms, e_phase, is of
      relative order eps * mu/(1-mu))."""
    rng = np.random.default_rng(53)
    mu, eta = 0.1, 0.1
    x, y = rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    out = {}
    for eps in (0.05, 0.1):
        model, ref = _learned_network(mu, eps=eps)
        L, r = ref.L, mu / (1 - mu)
        free = ds.fixed_point(model, torch.tensor(x), tol=1e-13)
        nudged = ds.fixed_point(model, torch.tensor(x),
                                target=ds.Nudge(torch.tensor(y), "mse", eta), tol=1e-13)
        assert bool(free.converged.all()) and bool(nudged.converged.all())
        hf = [l.numpy() for l in free.layers]
        hn = [l.numpy() for l in nudged.layers]
        df, dn = _deviations(ref, x, hf), _deviations(ref, x, hn)
        signal = np.linalg.norm(dn[0] - df[0])
        recon = np.linalg.norm(df[0])
        # (6.22) last term with J_{g_k} = Q_k D^{-1}: -eta r^L [prod_{k=1}^{L-1} J_{g_k}] e_L
        h = [x] + hn
        v = -eta * r * (hn[-1] - y)
        for k in range(L - 1, 0, -1):
            D = ds_np("leaky_relu", ref.pre(k + 1, h[k]), 0.5)
            v = r * (v / D) @ ref.Q[k - 1].T
        out[eps] = (signal, recon, np.linalg.norm(v))
    with capsys.disabled():
        for eps, (sig, rec, pred) in out.items():
            print(f"\n(6.22) mu={mu}, eta_hat={eta}, eps={eps}, layer 1: |signal| = {sig:.3e}, "
                  f"|reconstruction| = {rec:.3e}, ratio = {sig / rec:.2e}; (6.22) signal term "
                  f"= {pred:.3e}", end="")
        print()
    for sig, rec, pred in out.values():
        assert sig / rec < 0.1
        assert sig == pytest.approx(pred, rel=0.05)
    assert out[0.1][1] / out[0.05][1] == pytest.approx(2.0, rel=0.1)
    assert out[0.1][0] / out[0.05][0] == pytest.approx(1.0, rel=0.1)
