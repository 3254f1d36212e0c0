"""The adjoint method gives the same gradients through a simulation as direct backprop."""
import pytest
import torch

import dendrite_sim as ds
from dendrite_sim.models import Mixture


@pytest.mark.parametrize("feedback", ["exact", "learned"])
def test_adjoint_gradient_matches_direct(feedback):
    model = Mixture([3, 3, 3], mu=0.2, feedback=feedback, transfer="tanh", dtype=torch.float64,
                    seed=1)
    x = torch.randn(4, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    target = ds.Nudge(torch.zeros(4, 3, dtype=torch.float64), "mse", 0.2)
    grads = []
    for adjoint in (False, True):
        W = [w.clone().requires_grad_(True) for w in model.W]
        params = {**model.params, "W": W}
        if model.Q is not None:
            params["Q"] = list(model.Q)
        traj = ds.simulate(model, x, torch.tensor([0.0, 1.0], dtype=torch.float64), target,
                           params=params, adjoint=adjoint, rtol=1e-9, atol=1e-11)
        (traj.layers[-1][-1] ** 2).sum().backward()
        grads.append(torch.cat([w.grad.flatten() for w in W]))
    assert grads[0].abs().max() > 1e-3  # the gradient is not trivially zero
    # both are accurate to the integration tolerance; 1e-6 leaves margin for error control
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-5, atol=1e-8)
