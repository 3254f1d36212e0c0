"""fixed_point returns the equilibrium the dynamics reach from the starting state, says
whether it is stable, and fails fast and in words (issue 13).

Independent references: a tight dopri5 integration from the same initial state (its end
point, where its residual shows it converged), and dense ``torch.linalg.eigvals`` of the
autograd Jacobian (``ds.spectrum``)."""
import time

import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.dynamics.equilibrium import EquilibriumSolver
from dendrite_sim.models import Mixture, TwoPhaseDTP

F64 = torch.float64


def clamped(seed, batch, width=8, transfer="leaky_relu", gain=2.0):
    """Mixture([w]*4, mu=0.2, learned feedback with noise, biases, compensate_decay) and a
    strong clamped target: several stable equilibria and saddles per example."""
    model = Mixture([width] * 4, mu=0.2, feedback="learned", transfer=transfer, bias=True,
                    compensate_decay=True, dtype=F64, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    for b in model.params["b"]:
        b.copy_(0.3 * torch.randn(b.shape, dtype=F64, generator=gen))
    for q in model.params["Q"]:
        q.add_(0.5 * torch.randn(q.shape, dtype=F64, generator=gen) / width ** 0.5)
    x = torch.randn(batch, width, dtype=F64, generator=gen)
    return model, x, gain * torch.randn(batch, width, dtype=F64, generator=gen)


def integrated(model, x, target, horizon=200.0, rtol=1e-9, atol=1e-11):
    """End of a tight integration from the initial state and its residual max |dy/dt|."""
    end = ds.simulate(model, x, torch.tensor([0.0, horizon], dtype=F64), target, rtol=rtol,
                      atol=atol).final
    rate = model.field(0.0, end, model.drive(x, target), model.prepare(model.params))
    return end, rate.abs().amax(-1)


def dense_leading(model, x, y, target):
    return ds.spectrum(model, x, y, target).max_real


def test_unstable_root_is_not_returned_for_the_reached_equilibrium():
    """Issue 13, item 1: Newton (basin "any", the former default) finds a root with a
    positive eigenvalue where the dynamics settle at a stable point; the default returns the
    stable point the integration reaches, and flags the Newton root as unstable."""
    model, x, target = clamped(0, 64)
    x, target = x[[5]], target[[5]]
    newton = ds.fixed_point(model, x, target, basin="any")
    assert bool(newton.converged.all()) and not bool(newton.stable.any())
    assert newton.reason == ("unstable",)
    torch.testing.assert_close(newton.leading_eigenvalue,
                               dense_leading(model, x, newton.y, target))
    assert float(newton.leading_eigenvalue) > 0.05
    end, rate = integrated(model, x, target)
    assert float(rate.max()) < 1e-8
    eq = ds.fixed_point(model, x, target)
    assert bool(eq.stable.all()) and eq.reason == ("",) and bool(eq.reached.all())
    assert float((end - newton.y).abs().max()) > 1e-2          # the two roots differ
    torch.testing.assert_close(eq.y, end, rtol=0, atol=1e-7)
    torch.testing.assert_close(eq.leading_eigenvalue, dense_leading(model, x, eq.y, target))


@pytest.mark.parametrize("seed", [1, 2, 4])
def test_randomized_family_matches_integration_and_eigenvalues(seed):
    """64 examples per seed (192 in all) of small strongly clamped leaky-ReLU networks (with
    Newton from the forward pass, 5-10 % of them end at another stable root or a saddle):
    wherever the tight integration converged, fixed_point returns its end point; every
    ``stable`` flag agrees with dense eigenvalues at the returned state."""
    model, x, target = clamped(seed, 64, width=6)
    eq = ds.fixed_point(model, x, target, max_seconds=60)
    end, rate = integrated(model, x, target)
    settled = rate < 1e-8
    assert int(settled.sum()) >= 56
    torch.testing.assert_close(eq.y[settled], end[settled], rtol=0, atol=1e-6)
    assert bool(eq.reached[settled].all())
    lead = dense_leading(model, x, eq.y, target)
    assert torch.equal(eq.stable, eq.converged & (lead < 0))
    ok = eq.converged
    torch.testing.assert_close(eq.leading_eigenvalue[ok], lead[ok], rtol=1e-8, atol=1e-10)


def test_arnoldi_leading_eigenvalue_matches_dense_eigenvalues():
    """Above dense_limit the leading eigenvalue comes from Arnoldi on JVPs, or is certified
    negative (``-inf``) where the relaxation map returns to the root from a perturbation;
    against dense eigenvalues at the same states (basin "any": stable and unstable roots):
    every certified root is stable, every unstable one is estimated, and the estimates agree."""
    model, x, target = clamped(0, 64)
    eq = ds.fixed_point(model, x, target, basin="any", dense_limit=8, method="newton")
    lead = dense_leading(model, x, eq.y, target)
    ok = eq.converged
    assert int(ok.sum()) >= 60 and bool((lead[ok] > 0).any()) and bool((lead[ok] < 0).any())
    certified = ok & torch.isinf(eq.leading_eigenvalue)
    estimated = ok & torch.isfinite(eq.leading_eigenvalue)
    assert torch.equal(certified | estimated, ok)
    assert bool((lead[certified] < 0).all()) and bool(estimated[ok & (lead > 0)].all())
    torch.testing.assert_close(eq.leading_eigenvalue[estimated], lead[estimated], rtol=0,
                               atol=1e-6)
    assert torch.equal(eq.stable, ok & (lead < 0))


def test_slow_failure_reports_within_budget():
    """Issue 13, item 2: Mixture([64]*6, mu=0.2, leaky ReLU slope 0.2), float32, batch 256:
    with a 3 s budget fixed_point returns within 5 s, and names each example without a
    stable equilibrium, its residual and the reason."""
    model = Mixture([64] * 6, mu=0.2, feedback="learned", transfer="leaky_relu", slope=0.2)
    gen = torch.Generator().manual_seed(0)
    x = 0.5 * torch.randn(256, 64, generator=gen)
    target = (torch.rand(256, 64, generator=gen) - 0.5) * 0.6
    # the first JVP of a process imports torch's decompositions (1-7 s, measured), once
    ds.fixed_point(model, x[:2], target[:2], method="newton_krylov", max_iter=1)
    start = time.perf_counter()
    eq = ds.fixed_point(model, x, target, max_seconds=3.0)
    assert time.perf_counter() - start < 5.0
    bad = [b for b, why in enumerate(eq.reason) if why]
    assert bad and all(eq.reason[b] in ("unstable", "oscillating", "diverging", "budget",
                                        "stalled") for b in bad)
    assert not bool(eq.converged[[b for b in bad if eq.reason[b] not in ("unstable", "budget")]]
                    .any())
    # a root whose stability the spent budget left unchecked says "budget" (NaN eigenvalue)
    unchecked = [b for b in bad if eq.reason[b] == "budget" and bool(eq.converged[b])]
    assert bool(eq.leading_eigenvalue[unchecked].isnan().all())
    assert f"example {bad[0]}: {eq.reason[bad[0]]}, residual" in eq.report
    assert torch.equal(eq.reached, torch.tensor([not why for why in eq.reason]))


def test_evaluation_budget_is_respected():
    model, x, target = clamped(0, 16)
    eq = ds.fixed_point(model, x, target, max_evals=200)
    # a solver step in flight may finish (one dense Jacobian, ~N + 1, or one stretch)
    assert eq.nfev < 200 + 6 * 2000 and "budget" in eq.reason


def test_gates_that_stop_a_variable_raise_a_clear_error():
    """Issue 13, item 3: the learning phase's gates (trace held) leave the trace's
    equilibrium undefined: a ValueError naming the blocks and the gates, not LinAlgError."""
    model = TwoPhaseDTP([6, 5, 4], dtype=F64)
    x = torch.randn(3, 6, dtype=F64, generator=torch.Generator().manual_seed(0))
    target = torch.zeros(3, 4, dtype=F64)
    for kwargs in ({}, {"basin": "any"}, {"method": "newton_krylov", "dense_limit": 4}):
        with pytest.raises(ValueError, match=r"not isolated.*z\[1\].*z\[2\].*'trace': 0"):
            # above dense_limit the stability (and this check) waits for its first access
            ds.fixed_point(model, x, target, gates={"teach": 1.0, "trace": 0.0},
                           **kwargs).stable


def test_solver_object_and_keywords_agree_and_validate():
    model, x, target = clamped(1, 8, width=6)
    solver = EquilibriumSolver(basin="any", tol=1e-11, max_iter=30)
    a = ds.fixed_point(model, x, target, solver=solver)
    b = ds.fixed_point(model, x, target, basin="any", tol=1e-11, max_iter=30)
    torch.testing.assert_close(a.y, b.y, rtol=0, atol=0)
    assert a.tol == 1e-11
    with pytest.raises(ValueError, match="method"):
        EquilibriumSolver(method="bisection")
    with pytest.raises(ValueError, match="basin"):
        EquilibriumSolver(basin="nearest")
    with pytest.raises(ValueError, match="max_seconds"):
        EquilibriumSolver(max_seconds=0)
    with pytest.raises(ValueError, match="max_evals"):
        EquilibriumSolver(max_evals=2.5)
    with pytest.raises(ValueError, match="rate_tol"):
        EquilibriumSolver(tol=1e-6, rate_tol=1e-7)
    with pytest.raises(ValueError, match="settings"):
        ds.fixed_point(model, x, target, basn="any")
    with pytest.raises(dataclasses_error()):
        solver.tol = 1.0


def dataclasses_error():
    import dataclasses
    return dataclasses.FrozenInstanceError
