"""Input validation at the public boundary, and the error raised on numerical failure."""
from __future__ import annotations

import math

import torch

__all__ = ["NumericalError", "check_range", "check_tensor", "all_finite"]


class NumericalError(RuntimeError):
    """Integration or root-finding produced NaN/inf, blew up, or failed to converge."""


def check_range(name: str, value, low=None, high=None, low_open=False, high_open=False):
    """Raise ``ValueError`` naming ``name`` unless ``low (<|<=) value (<|<=) high``."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a real number; got {value!r}") from None
    ok = math.isfinite(v)
    if low is not None:
        ok &= v > low if low_open else v >= low
    if high is not None:
        ok &= v < high if high_open else v <= high
    if not ok:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must lie in {left}{lo}, {hi}{right}; got {value!r}")
    return v


def all_finite(value: torch.Tensor) -> bool:
    """Whether every entry is finite: the largest magnitude is (``amax`` propagates NaN). Two
    operations and one read back, where ``isfinite(value).all()`` takes five and one."""
    return value.numel() == 0 or math.isfinite(float(value.abs().amax()))


def check_tensor(name: str, value, width: int, dtype: torch.dtype, device: torch.device,
                 allow_1d: bool = True) -> torch.Tensor:
    """Validate a batched input: a (B, width) tensor of the model's dtype and device, finite.

    A 1-D tensor of length ``width`` is accepted as a batch of one when ``allow_1d``.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, {width}); "
                         f"got {type(value).__name__}")
    if value.dim() == 1 and allow_1d:
        value = value.unsqueeze(0)
    if value.dim() != 2 or value.shape[1] != width:
        raise ValueError(f"{name} must have shape (batch, {width}); got {tuple(value.shape)}")
    if value.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (the model's); got {value.dtype}")
    if value.device.type != torch.device(device).type:
        raise ValueError(f"{name} must be on device {device} (the model's); got {value.device}")
    if not all_finite(value):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return value
