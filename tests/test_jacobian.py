"""Jacobian, block views and spectra of the mixture model (SPEC §3, thesis §6.7, (6.38)-(6.42)).

References are independent: the analytic block-tridiagonal form written with numpy, a central
finite difference of a numpy re-implementation of (6.1), numpy.linalg.eigvals, and the closed
form of the §6.7 spectrum derived below.

Closed form of the §6.7 spectrum
--------------------------------
With exact inverses, the linearisation (6.40)-(6.42) at a free equilibrium (or with the output
target held fixed) is the block-tridiagonal matrix

    Jbar = [[-I,        mu A_2^{-1},                       ],
            [(1-mu)A_2, -I,          mu A_3^{-1},          ],
            [           (1-mu) A_3,  -I,          ...      ],
            [                        ...,   (1-mu) A_L, -I ]]      (A_i = J_{f_i} = D_{s_i} W_i)

Take the block-diagonal S = diag(S_1, ..., S_L) with S_1 = I and S_{i} = A_i S_{i-1}. Then in
S^{-1} Jbar S the diagonal blocks stay -I, the lower blocks become
S_i^{-1} (1-mu) A_i S_{i-1} = (1-mu) I and the upper blocks S_{i-1}^{-1} mu A_i^{-1} S_i = mu I.
So S^{-1} Jbar S = T (x) I_n with T = tridiag(1-mu, -1, mu) (L x L), whatever the A_i are.
The eigenvalues of a tridiagonal Toeplitz matrix tridiag(c, a, b) are
a + 2 sqrt(bc) cos(k pi / (L+1)), k = 1..L, so

    spec(Jbar) = { -1 + 2 sqrt(mu (1-mu)) cos(k pi / (L+1)) : k = 1..L },  each n-fold.

They are real, and since mu (1-mu) < 1/4 for mu != 1/2, all lie in (-2, 0): the equilibrium is
locally stable for every mu in (0, 1/2) (in fact (0, 1) minus 1/2), for every network. The
largest is -1 + 2 sqrt(mu(1-mu)) cos(pi/(L+1)) > -1 + cos(pi/(L+1)) (-> 0 only as L grows and
mu -> 1/2). In the engine's free mode the top target is g_L = h_L, which adds mu I to the
last diagonal block: T's last diagonal entry becomes -(1-mu) (eigenvalues from numpy on the
L x L matrix). Everything is divided by tau.
"""
import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

import dendrite_sim as ds
from dendrite_sim.models import Mixture

F64 = torch.float64


# ----------------------------------------------------------------------------------------------
# numpy reference of (6.1) and of its analytic Jacobian
# ----------------------------------------------------------------------------------------------
def s_np(name, a, slope):
    return {"identity": lambda: a, "leaky_relu": lambda: np.where(a >= 0, a, slope * a),
            "tanh": lambda: np.tanh(a)}[name]()


def sinv_np(name, y, slope):
    return {"identity": lambda: y, "leaky_relu": lambda: np.where(y >= 0, y, y / slope),
            "tanh": lambda: np.arctanh(y)}[name]()


def sprime_np(name, a, slope):
    return {"identity": lambda: np.ones_like(a),
            "leaky_relu": lambda: np.where(a >= 0, 1.0, slope),
            "tanh": lambda: 1 - np.tanh(a) ** 2}[name]()


class Ref:
    def __init__(self, model, transfer, slope, feedback, form="inverse", gain=1.0):
        self.sizes, self.L = list(model.sizes), model.depth
        self.mu, self.tau = float(model.mu), float(model.tau)
        self.transfer, self.slope, self.feedback, self.form = transfer, slope, feedback, form
        self.gain = gain
        self.W = [w.numpy().copy() for w in model.params["W"]]
        self.b = [np.zeros(n) if b is None else b.numpy().copy()
                  for b, n in zip(model.params["b"], self.sizes[1:])]
        self.Q = [q.numpy().copy() for q in model.params["Q"]] if "Q" in model.params else None
        self.offsets = np.cumsum([0] + self.sizes[1:])

    def split(self, y):
        return [y[..., self.offsets[k]:self.offsets[k + 1]] for k in range(self.L)]

    def pre(self, i, h_prev):
        return h_prev @ self.W[i - 1].T + self.b[i - 1]

    def g(self, i, y):
        if self.feedback == "exact":
            return self.gain * np.linalg.solve(
                self.W[i], (sinv_np(self.transfer, y, self.slope) - self.b[i]).T).T
        if self.form == "classic":
            return self.gain * s_np(self.transfer, y @ self.Q[i - 1].T, self.slope)
        return self.gain * (sinv_np(self.transfer, y, self.slope) - self.b[i]) @ self.Q[i - 1].T

    def top(self, hL, teach):
        if teach[0] == "free":
            return hL
        if teach[0] == "clamp":
            return teach[1]
        _, y, loss, eta = teach
        if loss == "mse":
            return hL - eta * (hL - y)
        p = np.exp(hL - hL.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        return hL - eta * (p - y)

    def field(self, x, y, teach):
        h = [x] + self.split(y)
        out = []
        for i in range(1, self.L + 1):
            f = s_np(self.transfer, self.pre(i, h[i - 1]), self.slope)
            g = self.g(i, h[i + 1]) if i < self.L else self.top(h[i], teach)
            out.append((-h[i] + (1 - self.mu) * f + self.mu * g) / self.tau)
        return np.concatenate(out, -1)

    def fd_jacobian(self, x, y, teach, step=1e-6):
        """Central differences of the numpy field, (B, N, N)."""
        B, N = y.shape
        J = np.empty((B, N, N))
        for k in range(N):
            e = np.zeros(N)
            e[k] = step
            J[:, :, k] = (self.field(x, y + e, teach) - self.field(x, y - e, teach)) / (2 * step)
        return J

    def analytic_jacobian(self, x, y, teach):
        """(6.40)-(6.42) for piecewise-linear / smooth s, any state: blocks
        diag -I (+ mu d h_L^trgt / d h_L on the top one), lower (1-mu) D_{s_i}(a_i) W_i,
        upper mu J_{g_i} with J_{g_i} = W_{i+1}^{-1} diag(1 / s'(s^{-1}(h_{i+1}))) (exact) or
        Q_i diag(1 / s'(s^{-1}(h_{i+1}))) (learned inverse form); all / tau."""
        B, N = y.shape
        h = [x] + self.split(y)
        o, mu, L = self.offsets, self.mu, self.L
        J = np.zeros((B, N, N))
        for b in range(B):
            J[b] = -np.eye(N)
            for i in range(1, L + 1):
                r = slice(o[i - 1], o[i])
                if i >= 2:
                    D = sprime_np(self.transfer, self.pre(i, h[i - 1][b]), self.slope)
                    J[b, r, o[i - 2]:o[i - 1]] = (1 - mu) * D[:, None] * self.W[i - 1]
                if i < L:
                    y_up = h[i + 1][b]
                    dinv = 1.0 / sprime_np(self.transfer, sinv_np(self.transfer, y_up, self.slope),
                                           self.slope)
                    base = np.linalg.inv(self.W[i]) if self.feedback == "exact" else self.Q[i - 1]
                    J[b, r, o[i]:o[i + 1]] = mu * self.gain * base * dinv[None, :]
            top = slice(o[L - 1], o[L])
            nL = self.sizes[-1]
            if teach[0] == "free":
                J[b, top, top] += mu * np.eye(nL)
            elif teach[0] == "nudge" and teach[2] == "mse":
                J[b, top, top] += mu * (1 - teach[3]) * np.eye(nL)
            elif teach[0] == "nudge":
                hL = h[L][b]
                p = np.exp(hL - hL.max())
                p /= p.sum()
                J[b, top, top] += mu * (np.eye(nL) - teach[3] * (np.diag(p) - np.outer(p, p)))
        return J / self.tau


def make(sizes, transfer, feedback, seed, mu=0.2, tau=0.7, bias=True, slope=0.3,
         form="inverse", gain=1.0, q_noise=0.2):
    m = Mixture(sizes, mu=mu, tau=tau, feedback=feedback, transfer=transfer, slope=slope,
                bias=bias, seed=seed, dtype=F64, form=form, feedback_gain=gain)
    gen = torch.Generator().manual_seed(seed)
    if bias:
        m.params["b"][:] = [0.3 * torch.randn(b.shape, generator=gen, dtype=F64)
                            for b in m.params["b"]]
    if feedback == "learned":
        m.params["Q"][:] = [q + q_noise * torch.randn(q.shape, generator=gen, dtype=F64)
                            for q in m.params["Q"]]
    return m


def teach_for(kind, nL, B, rng):
    if kind == "free":
        return None, ("free",)
    if kind == "clamp":
        y = 0.5 * np.tanh(rng.standard_normal((B, nL)))
        return torch.tensor(y), ("clamp", y)
    if kind == "mse":
        y = rng.standard_normal((B, nL))
        return ds.Nudge(torch.tensor(y), "mse", 0.3), ("nudge", y, "mse", 0.3)
    lab = rng.integers(0, nL, B)
    return ds.Nudge(torch.tensor(lab), "cross_entropy", 0.7), ("nudge", np.eye(nL)[lab], "ce", 0.7)


def random_state(ref, rng, B, bound=None):
    y = rng.standard_normal((B, ref.offsets[-1]))
    if bound is not None:
        y = bound * np.tanh(y)
    return y


# ----------------------------------------------------------------------------------------------
# Jacobian vs analytic form and finite differences
# ----------------------------------------------------------------------------------------------
@pytest.mark.parametrize("transfer", ["identity", "leaky_relu"])
@pytest.mark.parametrize("teach", ["free", "clamp", "mse", "ce"])
def test_jacobian_matches_analytic_block_tridiagonal_exact(transfer, teach):
    rng = np.random.default_rng(7)
    B, sizes = 3, [4, 4, 4, 4]
    model = make(sizes, transfer, "exact", seed=7)
    ref = Ref(model, transfer, 0.3, "exact")
    x = rng.standard_normal((B, 4))
    y = random_state(ref, rng, B)  # an arbitrary state, not an equilibrium
    target, teach_np = teach_for(teach, 4, B, rng)
    J = ds.jacobian(model, torch.tensor(x), torch.tensor(y), target=target)
    assert tuple(J.shape) == (B, 12, 12)
    # float64, same formulas in another order: entries of size <= ~10 agree to ~1e-14; the
    # analytic inverse via numpy.linalg.inv vs the engine's LU solve differ by cond(W) * eps
    np.testing.assert_allclose(np.asarray(J), ref.analytic_jacobian(x, y, teach_np),
                               rtol=0, atol=1e-10)


def test_jacobian_matches_analytic_learned_inverse_form():
    rng = np.random.default_rng(8)
    B, sizes = 3, [5, 4, 3, 2]
    model = make(sizes, "leaky_relu", "learned", seed=8)
    ref = Ref(model, "leaky_relu", 0.3, "learned")
    x = rng.standard_normal((B, 5))
    y = random_state(ref, rng, B)
    target, teach_np = teach_for("mse", 2, B, rng)
    J = ds.jacobian(model, torch.tensor(x), torch.tensor(y), target=target)
    np.testing.assert_allclose(np.asarray(J), ref.analytic_jacobian(x, y, teach_np),
                               rtol=0, atol=1e-10)


@pytest.mark.parametrize("feedback,form,sizes,teach", [
    ("exact", "inverse", [4, 4, 4, 4], "ce"),
    ("exact", "inverse", [3, 3, 3], "free"),
    ("learned", "inverse", [5, 4, 3, 2], "clamp"),
    ("learned", "classic", [3, 5, 4, 3], "mse"),
])
def test_jacobian_matches_finite_difference_tanh(feedback, form, sizes, teach):
    """Central difference with step 1e-6 of the numpy field: truncation ~ step^2 |F'''| ~ 1e-11,
    rounding ~ eps |F| / step ~ 1e-9 (|F| <= ~10 with atanh of |h| <= 0.8), so 1e-6 is safe."""
    rng = np.random.default_rng(9)
    B = 3
    model = make(sizes, "tanh", feedback, seed=9, form=form)
    ref = Ref(model, "tanh", 0.3, feedback, form)
    x = rng.standard_normal((B, sizes[0]))
    y = random_state(ref, rng, B, bound=0.8)
    target, teach_np = teach_for(teach, sizes[-1], B, rng)
    J = ds.jacobian(model, torch.tensor(x), torch.tensor(y), target=target)
    np.testing.assert_allclose(np.asarray(J), ref.fd_jacobian(x, y, teach_np), rtol=0, atol=1e-6)


def test_jacobian_accepts_equilibrium_and_trajectory():
    rng = np.random.default_rng(10)
    model = make([4, 4, 4], "leaky_relu", "exact", seed=10)
    ref = Ref(model, "leaky_relu", 0.3, "exact")
    x = torch.tensor(rng.standard_normal((2, 4)))
    eq = ds.fixed_point(model, x)
    tr = ds.simulate(model, x, [0.0, 1.0])
    y_eq = torch.cat(eq.layers, -1).numpy()
    y_tr = torch.cat([l[-1] for l in tr.layers], -1).numpy()
    np.testing.assert_allclose(np.asarray(ds.jacobian(model, x, eq)),
                               ref.analytic_jacobian(x.numpy(), y_eq, ("free",)), atol=1e-10)
    np.testing.assert_allclose(np.asarray(ds.jacobian(model, x, tr)),
                               ref.analytic_jacobian(x.numpy(), y_tr, ("free",)), atol=1e-10)


def test_block_views_are_the_right_slices():
    rng = np.random.default_rng(11)
    sizes = [5, 3, 6, 4, 2]  # distinct widths so a wrong slice cannot have the right shape
    model = make(sizes, "leaky_relu", "learned", seed=11)
    ref = Ref(model, "leaky_relu", 0.3, "learned")
    x = rng.standard_normal((2, 5))
    y = random_state(ref, rng, 2)
    J = ds.jacobian(model, torch.tensor(x), torch.tensor(y))
    A = ref.analytic_jacobian(x, y, ("free",))
    o = [0, 3, 9, 13, 15]
    assert list(J.block_names) == ["h[1]", "h[2]", "h[3]", "h[4]"]
    for i in range(1, 5):
        for j in range(1, 5):
            blk = J.block(f"h[{i}]", f"h[{j}]")
            assert tuple(blk.shape) == (2, sizes[i], sizes[j])
            np.testing.assert_array_equal(blk.numpy(), np.asarray(J)[:, o[i - 1]:o[i],
                                                                     o[j - 1]:o[j]])
            np.testing.assert_allclose(blk.numpy(), A[:, o[i - 1]:o[i], o[j - 1]:o[j]],
                                       atol=1e-10)
            if abs(i - j) > 1:
                assert not blk.numpy().any()  # block tridiagonal
    # the named blocks of (6.40): d(dh_2/dt)/dh_3 = mu J_{g_2} / tau, lower (1-mu) D W / tau
    mu, tau = model.mu, model.tau
    h = [x] + ref.split(y)
    dinv = 1 / sprime_np("leaky_relu", sinv_np("leaky_relu", h[3], 0.3), 0.3)
    np.testing.assert_allclose(J.block("h[2]", "h[3]").numpy(),
                               mu / tau * ref.Q[1][None] * dinv[:, None, :], atol=1e-12)
    D = sprime_np("leaky_relu", ref.pre(3, h[2]), 0.3)
    np.testing.assert_allclose(J.block("h[3]", "h[2]").numpy(),
                               (1 - mu) / tau * D[:, :, None] * ref.W[2][None], atol=1e-12)
    np.testing.assert_allclose(J.block("h[4]", "h[4]").numpy(),
                               np.broadcast_to(-(1 - mu) / tau * np.eye(2), (2, 2, 2)),
                               atol=1e-14)


# ----------------------------------------------------------------------------------------------
# spectrum
# ----------------------------------------------------------------------------------------------
def _match(a, b):
    """Largest distance after optimally pairing two eigenvalue multisets."""
    cost = np.abs(a[:, None] - b[None, :])
    r, c = linear_sum_assignment(cost)
    return cost[r, c].max()


@pytest.mark.parametrize("transfer,feedback,sizes,teach", [
    ("tanh", "learned", [5, 4, 3, 2], "mse"),
    ("leaky_relu", "exact", [4, 4, 4, 4], "clamp"),
    ("tanh", "exact", [3, 3, 3], "mse"),
    ("leaky_relu", "learned", [4, 3, 3], "ce"),
])
def test_spectrum_matches_numpy_eigvals(transfer, feedback, sizes, teach):
    rng = np.random.default_rng(12)
    B = 3
    model = make(sizes, transfer, feedback, seed=12)
    x = torch.tensor(rng.standard_normal((B, sizes[0])))
    target, _ = teach_for(teach, sizes[-1], B, rng)
    eq = ds.fixed_point(model, x, target=target)
    assert bool(eq.converged.all())
    sp = ds.spectrum(model, x, eq, target=target)
    J = np.asarray(ds.jacobian(model, x, eq, target=target))
    assert sp.eigenvalues.shape == (B, J.shape[1]) and sp.eigenvalues.is_complex()
    ev = sp.eigenvalues.numpy()
    for b in range(B):
        want = np.linalg.eigvals(J[b])
        # two LAPACK runs on the same well-conditioned 12x12 matrix: differences ~1e-14
        assert _match(ev[b], want) < 1e-9
        assert sp.max_real[b].item() == pytest.approx(want.real.max(), abs=1e-10)
    # sorted by decreasing real part (documented)
    assert np.all(np.diff(ev.real, axis=-1) <= 1e-12)
    assert torch.equal(sp.stable, sp.max_real < 0)
    assert bool(sp.stable.all())
    np.testing.assert_allclose(sp.slowest_time_constant.numpy(), -1 / sp.max_real.numpy(),
                               rtol=1e-14)


def test_spectrum_reports_instability():
    """Identity transfer, exact inverses, feedback gain c: by the closed form (docstring, mu -> c
    mu in the upper blocks) the clamped spectrum is -1 + 2 sqrt(c mu (1-mu)) cos(k pi/(L+1)),
    positive for k = 1 when c = 10, mu = 0.1, L = 3 (max real = +0.342 / tau)."""
    model = make([3, 3, 3, 3], "identity", "exact", seed=13, mu=0.1, tau=0.5, gain=10.0)
    ref = Ref(model, "identity", 0.3, "exact", gain=10.0)
    rng = np.random.default_rng(13)
    x = rng.standard_normal((2, 3))
    y = random_state(ref, rng, 2)
    clamp = rng.standard_normal((2, 3))
    sp = ds.spectrum(model, torch.tensor(x), torch.tensor(y), target=torch.tensor(clamp))
    k = np.arange(1, 4)
    cf = (-1 + 2 * np.sqrt(10 * 0.1 * 0.9) * np.cos(k * np.pi / 4)) / 0.5
    for b in range(2):
        assert _match(sp.eigenvalues[b].numpy(), np.repeat(cf, 3)) < 1e-6
        assert _match(sp.eigenvalues[b].numpy(),
                      np.linalg.eigvals(ref.analytic_jacobian(x, y, ("clamp", clamp))[b])) < 1e-8
    assert sp.max_real.numpy() == pytest.approx(cf.max(), abs=1e-8)
    assert not bool(sp.stable.any())
    assert bool(torch.isinf(sp.slowest_time_constant).all())


# ----------------------------------------------------------------------------------------------
# §6.7: stability of the exact-inverse equilibrium
# ----------------------------------------------------------------------------------------------
def closed_form(L, mu):
    k = np.arange(1, L + 1)
    return -1 + 2 * np.sqrt(mu * (1 - mu)) * np.cos(k * np.pi / (L + 1))


def free_T_eigs(L, mu):
    T = -np.eye(L) + (1 - mu) * np.eye(L, k=-1) + mu * np.eye(L, k=1)
    T[-1, -1] = -(1 - mu)
    return np.linalg.eigvals(T)


def thesis_matrix(Js, mu, n):
    """-I diagonal, (1-mu) J_i below, mu J_i^{-1} above (§6.7 text), with J_i = J_{f_{i+1}}."""
    L = len(Js) + 1
    A = -np.eye(L * n)
    for i, J in enumerate(Js):
        A[(i + 1) * n:(i + 2) * n, i * n:(i + 1) * n] = (1 - mu) * J
        A[i * n:(i + 1) * n, (i + 1) * n:(i + 2) * n] = mu * np.linalg.inv(J)
    return A


def test_random_block_tridiagonal_jacobians_are_stable(record_property, capsys):
    """5000 random cases as in §6.7: depth L in 2..6, width 2..8, mu ~ U(0, 0.5), J_i = D W with
    W Gaussian of random scale sigma = 10^U(-1, 1) and D a random positive diagonal (leaky-ReLU
    like derivatives in [0.1, 1]). All computed eigenvalues must have negative real part and
    must be the closed form (module docstring) up to rounding. Tolerance per case
    (Bauer-Fike): the matrix is diagonalised by V = S (V_T (x) I), so LAPACK's backward error
    E (||E|| <~ N eps ||A||) moves eigenvalues by at most cond(S) cond(V_T) N eps ||A||; with
    Gaussian blocks cond(S) (a product of cond(J_i)) reaches ~1e8, hence a per-case bound
    rather than a fixed one (measured: deviations <= 0.22 x bound, largest 1.8e-3)."""
    rng = np.random.default_rng(2024)
    worst, worst_bound, worst_dev, worst_ratio, uncertified = -np.inf, -np.inf, 0.0, 0.0, 0
    eps = np.finfo(float).eps
    for _ in range(5000):
        L, n, mu = int(rng.integers(2, 7)), int(rng.integers(2, 9)), rng.uniform(0.0, 0.5)
        sigma = 10 ** rng.uniform(-1, 1)
        Js = [rng.uniform(0.1, 1.0, n)[:, None] * sigma * rng.standard_normal((n, n))
              for _ in range(L - 1)]
        A = thesis_matrix(Js, mu, n)
        ev = np.linalg.eigvals(A)
        cf = np.repeat(closed_form(L, mu), n)
        S = [np.eye(n)]
        for J in Js:
            S.append(J @ S[-1])
        sv = [np.linalg.svd(blk, compute_uv=False) for blk in S]
        cond_S = max(v[0] for v in sv) / min(v[-1] for v in sv)
        T = -np.eye(L) + (1 - mu) * np.eye(L, k=-1) + mu * np.eye(L, k=1)
        cond_VT = np.linalg.cond(np.linalg.eig(T)[1])
        bound = cond_S * cond_VT * len(A) * eps * np.linalg.norm(A, 2)
        dev = max(np.abs(np.sort(ev.real) - np.sort(cf)).max(), np.abs(ev.imag).max())
        assert dev <= bound, (L, n, mu, dev, bound)
        worst = max(worst, ev.real.max())
        worst_bound = max(worst_bound, cf.max())
        worst_dev, worst_ratio = max(worst_dev, dev), max(worst_ratio, dev / bound)
        uncertified += bound >= -cf.max()
    with capsys.disabled():
        print(f"\n§6.7: 5000 random networks: largest real part {worst:.8f} (closed-form sup "
              f"{worst_bound:.8f} < -1 + cos(pi/7) = {-1 + np.cos(np.pi / 7):.8f}); max "
              f"deviation from closed form {worst_dev:.1e} (<= {worst_ratio:.2f} x its rounding "
              f"bound; {uncertified} draws too ill-conditioned for the bound to certify the sign)")
    record_property("max_real_part_random_networks", float(worst))
    assert worst < 0
    assert worst_bound < -1 + np.cos(np.pi / 7) + 1e-12


@pytest.mark.parametrize("mu", [0.01, 0.1, 0.25, 0.4, 0.499])
@pytest.mark.parametrize("L", [2, 3, 6])
def test_closed_form_spectrum_of_thesis_matrix(mu, L):
    """The closed form itself, on well-conditioned (orthogonal times diagonal) blocks."""
    rng = np.random.default_rng(int(1000 * mu) + L)
    n = 3
    Js = []
    for _ in range(L - 1):
        q, _ = np.linalg.qr(rng.standard_normal((n, n)))
        Js.append(rng.uniform(0.5, 2.0, n)[:, None] * q)
    ev = np.linalg.eigvals(thesis_matrix(Js, mu, n))
    assert _match(ev, np.repeat(closed_form(L, mu), n)) < 1e-7
    assert ev.real.max() == pytest.approx(-1 + 2 * np.sqrt(mu * (1 - mu)) * np.cos(np.pi / (L + 1)),
                                          abs=1e-7)


def test_mixture_equilibria_are_stable_and_match_closed_form(capsys):
    """100 random Mixture networks (exact inverses, identity or leaky ReLU, random depth 2..6,
    width 2..8, mu ~ U(0.01, 0.49), tau ~ U(0.5, 2)): at the free equilibrium (found by
    fixed_point; it is the forward pass, §6.4) dendrite_sim.spectrum gives
    * free mode: the eigenvalues of T_free / tau (last diagonal entry -(1-mu)), each n-fold;
    * target clamped at the free output (same equilibrium, fixed g_L -- the thesis' matrix):
      the closed form / tau, each n-fold;
    and equals numpy.linalg.eigvals of the thesis matrix built from D_{s_i} W_i at the
    equilibrium. Tolerance 1e-6: eigenvalue rounding ~eps * cond(S) (docstring) with the
    model's robustly-invertible W (sigma_min sigma_max > 0.4) and slopes >= 0.2."""
    rng = np.random.default_rng(77)
    worst, worst_clamp = -np.inf, -np.inf
    for trial in range(100):
        L, n = int(rng.integers(2, 7)), int(rng.integers(2, 9))
        mu, tau = rng.uniform(0.01, 0.49), rng.uniform(0.5, 2.0)
        transfer = ["identity", "leaky_relu"][trial % 2]
        slope = rng.uniform(0.2, 1.0)
        model = make([n] * (L + 1), transfer, "exact", seed=trial, mu=mu, tau=tau,
                     bias=bool(trial % 3), slope=slope)
        ref = Ref(model, transfer, slope, "exact")
        x = rng.standard_normal((2, n))
        eq = ds.fixed_point(model, torch.tensor(x))
        assert bool(eq.converged.all())
        h = [x]
        for i in range(1, L + 1):
            h.append(s_np(transfer, ref.pre(i, h[-1]), slope))
        np.testing.assert_allclose(torch.cat(eq.layers, -1).numpy(), np.concatenate(h[1:], -1),
                                   atol=1e-9)
        sp_free = ds.spectrum(model, torch.tensor(x), eq)
        sp_clamp = ds.spectrum(model, torch.tensor(x), eq, target=eq.layers[-1].clone())
        cf_free = np.repeat(free_T_eigs(L, mu), n) / tau
        cf_clamp = np.repeat(closed_form(L, mu), n) / tau
        for b in range(2):
            Js = [sprime_np(transfer, ref.pre(i, h[i - 1][b]), slope)[:, None] * ref.W[i - 1]
                  for i in range(2, L + 1)]
            direct = np.linalg.eigvals(thesis_matrix(Js, mu, n)) / tau
            assert _match(sp_free.eigenvalues[b].numpy(), cf_free) < 1e-6
            assert _match(sp_clamp.eigenvalues[b].numpy(), cf_clamp) < 1e-6
            assert _match(sp_clamp.eigenvalues[b].numpy(), direct) < 1e-6
        assert bool(sp_free.stable.all()) and bool(sp_clamp.stable.all())
        worst = max(worst, float(sp_free.max_real.max() * tau))
        worst_clamp = max(worst_clamp, float(sp_clamp.max_real.max() * tau))
    with capsys.disabled():
        print(f"\n§6.7 via Mixture (100 networks): largest tau * Re(lambda): free mode "
              f"{worst:.6f}, fixed target (thesis matrix) {worst_clamp:.6f}")
    assert worst < 0 and worst_clamp < 0


# ----------------------------------------------------------------------------------------------
# SPEC §5b regression guard
# ----------------------------------------------------------------------------------------------
def test_batched_linalg_solve_matches_per_example_numpy():
    """8 random 200x200 float64 systems: batched torch.linalg.solve (and lu_factor/lu_solve,
    inv) vs numpy per example. Gaussian A + 2 sqrt(n) I keeps cond(A) ~ 10, so the forward
    error is <= cond * eps * small ~ 1e-13; the silent thread bug of SPEC §5b gives O(1)."""
    rng = np.random.default_rng(5)
    n, B = 200, 8
    A = rng.standard_normal((B, n, n)) + 2 * np.sqrt(n) * np.eye(n)
    rhs = rng.standard_normal((B, n, 3))
    want = np.stack([np.linalg.solve(A[b], rhs[b]) for b in range(B)])
    At, rt = torch.tensor(A), torch.tensor(rhs)
    np.testing.assert_allclose(torch.linalg.solve(At, rt).numpy(), want, rtol=0, atol=1e-10)
    lu, piv = torch.linalg.lu_factor(At)
    np.testing.assert_allclose(torch.linalg.lu_solve(lu, piv, rt).numpy(), want, atol=1e-10)
    inv_want = np.stack([np.linalg.inv(A[b]) for b in range(B)])
    np.testing.assert_allclose(torch.linalg.inv(At).numpy(), inv_want, atol=1e-10)
    # float32 too (cond ~ 10: forward error ~ 10 * 6e-8)
    got32 = torch.linalg.solve(At.float(), rt.float()).numpy()
    np.testing.assert_allclose(got32, want, atol=1e-4)
