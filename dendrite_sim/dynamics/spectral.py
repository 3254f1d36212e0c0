"""Jacobians of the neural vector field, their spectra, and continuation in a parameter.

The Jacobian is taken of ``dy/dt`` (the model's field, time constants included) with the
parameters, input and teaching signal fixed; ``N`` counts the neural state only. Since example
``b`` of a batch depends on ``y_b`` alone, the batched Jacobian is obtained in one vectorised
reverse pass of ``sum_b F_b(y)``: ``d(sum_b F_b[k])/dy_b[j] = J_b[k, j]``.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from dendrite_sim.errors import check_finite_matrix
from dendrite_sim.dynamics.layout import Layout
from dendrite_sim.dynamics.model import Drive, NetworkModel

__all__ = ["Jacobian", "Spectrum", "jacobian", "jacobian_matrix", "spectrum", "field_jacobian",
           "as_state"]


class Jacobian(torch.Tensor):
    """A ``(B, N, N)`` tensor with named block views: ``J.block("h[2]", "h[3]")`` is
    ``d(dh_2/dt)/dh_3``, shape ``(B, n_2, n_3)``. Operations on it return plain tensors."""

    __torch_function__ = torch._C._disabled_torch_function_impl
    state_layout: Layout

    @staticmethod
    def wrap(matrix: torch.Tensor, layout: Layout) -> "Jacobian":
        out = torch.Tensor._make_subclass(Jacobian, matrix, False)
        out.state_layout = layout
        return out

    def block(self, row: str, col: str) -> torch.Tensor:
        r, c = self.state_layout[row].slice, self.state_layout[col].slice
        return torch.Tensor(self)[:, r, c]

    @property
    def block_names(self) -> list[str]:
        return [b.name for b in self.state_layout.blocks]


def as_state(model: NetworkModel, state, batch: int) -> torch.Tensor:
    """Accept an equilibrium, a trajectory (its final state) or a ``(B, N)`` tensor."""
    if hasattr(state, "final"):
        state = state.final
    elif hasattr(state, "y") and not isinstance(state, torch.Tensor):
        state = state.y
    return model.check_state(state, batch)


def field_jacobian(model: NetworkModel, drive: Drive, y: torch.Tensor, prepared,
                   t: float = 0.0, chunk_size: int | None = None) -> torch.Tensor:
    """Batched ``dF/dy`` as a plain ``(B, N, N)`` tensor (engine-level)."""
    def summed(v):
        return model.field(t, v, drive, prepared).sum(0)

    with torch.enable_grad():
        jac = torch.func.jacrev(summed, chunk_size=chunk_size)(y.detach())
    return jac.permute(1, 0, 2)


def jacobian(model: NetworkModel, x, state, target=None, *, t: float = 0.0, params=None,
             gates=None, chunk_size=None) -> Jacobian:
    """Jacobian ``d(dy/dt)/dy`` at ``state``, ``(B, N, N)`` with named block views.

    ``state`` is a ``fixed_point`` result, a ``simulate`` result (final state) or a tensor.
    For the mixture model (6.40): blocks ``-I/tau`` on the diagonal, ``(1-mu) D_s W / tau``
    below and ``mu dg/dh / tau`` above.
    Non-finite entries (a state outside a transfer function's inverse domain, an overflowing
    field) raise :class:`~dendrite_sim.errors.NumericalError`.
    """
    jac = jacobian_matrix(model, x, state, target, t=t, params=params, gates=gates,
                          chunk_size=chunk_size)
    check_finite_matrix("the Jacobian", jac, _NONFINITE_CAUSE)
    return Jacobian.wrap(jac, model.layout)


_NONFINITE_CAUSE = ("the vector field is not differentiable to a finite value at the state; "
                    "typically the state lies outside a transfer function's inverse domain "
                    "(tanh needs -1 < h < 1, sigmoid 0 < h < 1) or the field overflows there")


def jacobian_matrix(model: NetworkModel, x, state, target=None, *, t: float = 0.0,
                    params=None, gates=None, chunk_size=None) -> torch.Tensor:
    """:func:`jacobian` as a plain ``(B, N, N)`` tensor, non-finite entries left in place
    (for callers that mark those examples themselves, e.g. ``continuation``). An example
    whose field is not finite at its state gets a NaN Jacobian: its derivatives can be finite
    there (``atanh'(y) = 1/(1-y^2)`` for ``|y| > 1``) but describe no dynamics."""
    drive = model.drive(x, target, gates)
    y = as_state(model, state, drive.batch_size)
    prepared = model.prepare(model.check_params(params))
    jac = field_jacobian(model, drive, y, prepared, t, chunk_size)
    defined = torch.isfinite(model.field(t, y, drive, prepared)).all(-1)
    return torch.where(defined[:, None, None], jac, torch.full_like(jac, float("nan")))


@dataclass
class Spectrum:
    """Eigenvalues of the Jacobian at a state.

    ``eigenvalues`` complex ``(B, N)`` sorted by decreasing real part; ``max_real`` ``(B,)``;
    ``stable`` ``max_real < 0``; ``slowest_time_constant`` ``-1/max_real`` (inf if unstable);
    ``oscillatory`` bool ``(B, N)`` marks eigenvalues with a non-negligible imaginary part.
    """

    eigenvalues: torch.Tensor
    jacobian: torch.Tensor

    @property
    def max_real(self) -> torch.Tensor:
        return self.eigenvalues.real[:, 0]

    @property
    def stable(self) -> torch.Tensor:
        return self.max_real < 0

    @property
    def slowest_time_constant(self) -> torch.Tensor:
        mr = self.max_real
        return torch.where(mr < 0, -1.0 / mr, torch.full_like(mr, float("inf")))

    @property
    def oscillatory(self) -> torch.Tensor:
        scale = self.eigenvalues.abs().amax(-1, keepdim=True).clamp_min(1e-30)
        eps = torch.finfo(self.eigenvalues.real.dtype).eps
        return self.eigenvalues.imag.abs() > 1e3 * eps * scale

    @property
    def max_frequency(self) -> torch.Tensor:
        """Largest ``|Im(lambda)| / (2 pi)`` per example (0 without oscillatory modes)."""
        return self.eigenvalues.imag.abs().amax(-1) / (2 * torch.pi)


def eigenvalues_sorted(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues of a batch of general matrices, sorted by decreasing real part. A
    non-finite matrix raises :class:`~dendrite_sim.errors.NumericalError` (LAPACK's balancing
    can crash the process on one)."""
    ev = torch.linalg.eigvals(check_finite_matrix("the matrix of an eigenvalue problem", matrix))
    order = torch.argsort(ev.real, dim=-1, descending=True)
    return torch.gather(ev, -1, order)


def spectrum(model: NetworkModel, x, state, target=None, **kwargs) -> Spectrum:
    """Spectrum of :func:`jacobian` at ``state`` (same arguments)."""
    jac = jacobian(model, x, state, target, **kwargs)
    plain = torch.Tensor(jac)
    return Spectrum(eigenvalues_sorted(plain), jac)
