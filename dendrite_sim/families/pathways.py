"""Basal (forward) and apical (feedback) pathways of a layered network (thesis 6.2, 6.4, 6.23, 3.9).

Shared by the models whose somata mix a forward prediction ``f_i(h_{i-1})`` with a feedback
``g_i(h_{i+1})`` (mixture model, two-phase DTP). Layers are numbered as in the thesis:
``i = 1..L``, ``h_0 = x``; list position ``i-1`` holds layer ``i``'s parameters.

* forward:  ``f_i(h) = s_i(W_i h + b_i)``                                         (6.2)
* feedback, ``i = 1..L-1`` (``g_L`` is the teaching signal), scaled by a gain ``c``:
  - ``"exact"``:    ``g_i(y) = c W_{i+1}^{-1} (s_{i+1}^{-1}(y) - b_{i+1})``          (6.4)
  - ``"learned"``, ``form="inverse"``: ``g_i(y) = c Q_i t_i(y)``,
    ``t_i(y) = s_{i+1}^{-1}(y) - b_{i+1}``                                       (6.23, 4.90)
  - ``"learned"``, ``form="classic"``: ``g_i(y) = c s_i(Q_i y)``                    (3.9)

With biases, ``t_i`` subtracts ``b_{i+1}`` so that ``Q_i = W_{i+1}^{-1}`` is the exact inverse
(the thesis has no biases; this is the natural extension). ``Q_i`` starts at ``W_{i+1}^+``.
"""
from __future__ import annotations

import torch

from dendrite_sim.errors import (NumericalError, check_bool, check_device, check_dtype, check_int, check_range,
                                 check_sizes)
from dendrite_sim.dynamics.transfer import Transfer, make_transfer

__all__ = ["Pathways", "robust_invertible"]

FEEDBACKS = ("exact", "learned")
_check_sizes = check_sizes      # the name models/multiplexing.py imports
FORMS = ("inverse", "classic")


def robust_invertible(rows: int, cols: int, generator: torch.Generator, threshold: float,
                      max_resample: int = 20) -> torch.Tensor:
    """Gaussian ``(rows, cols)`` matrix, std ``1/sqrt(cols)``, with ``sigma_min*sigma_max`` above
    ``threshold`` (thesis §4.2.3: resample until it is).

    Large square Gaussian matrices have ``sigma_min ~ 1/n``, so resampling rarely succeeds; after
    ``max_resample`` tries the small singular values are raised to ``threshold / sigma_max``,
    which keeps the singular vectors of the last draw. Returned in float64.
    """
    for _ in range(max_resample):
        w = torch.randn(rows, cols, generator=generator, dtype=torch.float64) / cols ** 0.5
        sv = torch.linalg.svdvals(w)
        if float(sv[-1] * sv[0]) > threshold:
            return w
    u, sv, vh = torch.linalg.svd(w, full_matrices=False)
    sv = torch.clamp(sv, min=threshold / float(sv[0]) * 1.000001)
    return u @ torch.diag(sv) @ vh


class Pathways:
    """Forward maps ``f_i`` and feedback maps ``g_i`` with their parameters ``W, b, Q``."""

    def __init__(self, sizes, transfer="leaky_relu", slope=0.1, bias=False, feedback="exact",
                 form="inverse", feedback_gain=1.0, seed=0, dtype=torch.float32,
                 device="cpu", init_threshold=0.4):
        self.sizes = check_sizes(sizes)
        self.depth = len(self.sizes) - 1
        if not isinstance(feedback, str) or feedback not in FEEDBACKS:
            raise ValueError(f"feedback must be one of {FEEDBACKS}; got {feedback!r}")
        if not isinstance(form, str) or form not in FORMS:
            raise ValueError(f"form must be one of {FORMS}; got {form!r}")
        if feedback == "exact" and len(set(self.sizes)) != 1:
            raise ValueError("feedback='exact' needs equal layer sizes (square invertible W); "
                             f"got sizes {self.sizes}")
        self.feedback, self.form = feedback, form
        self.feedback_gain = check_range("feedback_gain", feedback_gain)
        self.transfers = _per_layer_transfers(transfer, slope, self.depth)
        self.dtype, self.device = check_dtype("dtype", dtype), check_device("device", device)
        self.params = self._init_params(check_bool("bias", bias),
                                        check_int("seed", seed, low=0, high=2 ** 63),
                                        check_range("init_threshold", init_threshold, low=0.0))

    # -- initialisation -------------------------------------------------------------------
    def _init_params(self, bias, seed, threshold):
        gen = torch.Generator().manual_seed(seed)
        as_model = dict(dtype=self.dtype, device=self.device)
        W = [robust_invertible(n_out, n_in, gen, threshold)
             for n_in, n_out in zip(self.sizes[:-1], self.sizes[1:])]
        params = {
            "W": [w.to(**as_model) for w in W],
            "b": [torch.zeros(n, **as_model) if bias else None for n in self.sizes[1:]],
        }
        if self.feedback == "learned":
            params["Q"] = [torch.linalg.pinv(w).to(**as_model) for w in W[1:]]
        return params

    # -- maps -------------------------------------------------------------------------------
    def preactivation(self, i: int, h_prev, P):
        """``a_i = W_i h_{i-1} + b_i`` for a batch ``(B, n_{i-1})``."""
        return torch.nn.functional.linear(h_prev, P["W"][i - 1], P["b"][i - 1])

    def forward(self, i: int, h_prev, P):
        """``f_i(h_{i-1}) = s_i(a_i)`` (6.2)."""
        return self.transfers[i - 1](self.preactivation(i, h_prev, P))

    def backward_input(self, i: int, y, P):
        """``t_i(y) = s_{i+1}^{-1}(y) - b_{i+1}`` (inverse form), unchecked domain."""
        u = self.transfers[i].inverse_unchecked(y)
        b = P["b"][i]
        return u if b is None else u - b

    def feedback_map(self, i: int, y, P):
        """``g_i(h_{i+1})`` for ``i = 1..L-1`` (module docstring), ``(B, n_i)``."""
        c = self.feedback_gain
        g = self.feedback_parts(i, y, P)[0]
        return g if c == 1.0 else c * g

    def feedback_parts(self, i: int, y, P):
        """``(g, factor)``: the feedback ``g_i(y)`` with gain 1 and the intermediate that
        :meth:`feedback_gradient` reuses — ``t_i(y)`` (inverse form; ``None`` when the bias is
        folded into ``P``, which skips forming it), ``Q_i y`` (classic form), ``None`` (exact
        feedback)."""
        if self.feedback == "exact":
            lu, pivots = P["W_lu"][i]
            return torch.linalg.lu_solve(lu, pivots, self.backward_input(i, y, P).T).T, None
        Q = P["Q"][i - 1]
        if self.form == "classic":
            a = y @ Q.T
            return self.transfers[i - 1](a), a
        if "feedback_bias" in P:          # prepared: Q_i (s^{-1}(y) - b_{i+1}) in one product
            u = self.transfers[i].inverse_unchecked(y)
            return torch.nn.functional.linear(u, Q, P["feedback_bias"][i - 1]), None
        t_i = self.backward_input(i, y, P)
        return torch.nn.functional.linear(t_i, Q), t_i

    def feedback_gradient(self, i: int, y, h_i, P, parts=None, scale=1.0, decay=None):
        """Batch-summed gradient of ``1/2 ||g_i(y) - h_i||^2`` w.r.t. ``Q_i`` (gain 1), times
        ``scale``, plus ``c M`` for ``decay = (M, c)`` (the weight-decay term of (6.37); one
        fused ``addmm`` where ``scale`` and ``c`` are plain numbers).

        Inverse form: ``(g_i(y) - h_i) t_i(y)^T`` — the data term of (6.26)/(6.37).
        Classic form: ``(D_{s_i}(Q_i y) (g_i(y) - h_i)) y^T`` (chain rule through ``s_i``).
        ``parts``: :meth:`feedback_parts` of ``y`` if already computed.
        """
        g, factor = self.feedback_parts(i, y, P) if parts is None else parts
        if self.form == "classic":
            left, right = self.transfers[i - 1].backprop(factor, g - h_i), y
        else:
            left = g - h_i
            right = self.backward_input(i, y, P) if factor is None else factor
        if decay is None:
            data = torch.mm(left.t(), right)
            return data if _is_one(scale) else data * scale
        M, c = decay
        if isinstance(scale, (int, float)) and isinstance(c, (int, float)):
            return torch.addmm(M, left.t(), right, beta=c, alpha=scale)   # beta 0: M ignored
        return torch.mm(left.t(), right) * scale + c * M

    def prepare(self, params, fold_bias=True):
        """Add the LU factors of each square ``W`` for exact feedback (unbatched solves only);
        for learned feedback in the inverse form with biases and ``fold_bias``, ``-Q_i
        b_{i+1}`` (the bias of ``g_i``, so that :meth:`feedback_map` is one matrix product)."""
        if self.feedback == "exact":
            return {**params, "W_lu": [_lu_factor(i, w) for i, w in enumerate(params["W"], 1)]}
        if self.form == "classic" or params["b"][0] is None or not fold_bias:
            return params
        return {**params, "feedback_bias": [-(q @ b) for q, b in zip(params["Q"],
                                                                     params["b"][1:])]}


def _is_one(number) -> bool:
    return isinstance(number, (int, float)) and number == 1


def _lu_factor(i: int, w: torch.Tensor):
    """LU factors of ``W_i`` for the exact inverse (6.4); a singular ``W_i`` raises
    :class:`~dendrite_sim.errors.NumericalError` (``lu_factor`` checks the pivots anyway, so
    the check costs no extra read back)."""
    lu, pivots, info = torch.linalg.lu_factor_ex(w)
    if int(info):
        raise NumericalError(f"W_{i} is singular (zero pivot {int(info)} in its LU factors): "
                             "exact feedback (6.4) needs invertible forward weights")
    return lu, pivots


def _per_layer_transfers(transfer, slope, depth) -> list[Transfer]:
    specs = transfer if isinstance(transfer, (list, tuple)) else [transfer] * depth
    if len(specs) != depth:
        raise ValueError(f"transfer must be one name or a list of {depth} (one per layer); "
                         f"got {len(specs)}")
    return [make_transfer(s, slope) for s in specs]
