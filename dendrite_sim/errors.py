"""Input validation at the public boundary, and the error raised on numerical failure."""
from __future__ import annotations

import math
import numbers

import torch

__all__ = ["NumericalError", "check_range", "check_tensor", "all_finite", "check_real",
           "check_int", "check_bool", "check_sizes", "check_dtype", "check_device",
           "check_finite_matrix", "FLOAT_DTYPES"]

#: the dtypes a model computes in (integer and half precision are not supported)
FLOAT_DTYPES = (torch.float32, torch.float64)


class NumericalError(RuntimeError):
    """Integration or root-finding produced NaN/inf, blew up, or failed to converge."""


def check_range(name: str, value, low=None, high=None, low_open=False, high_open=False):
    """Raise ``ValueError`` naming ``name`` unless ``low (<|<=) value (<|<=) high``
    (``TypeError`` unless ``value`` is a real number, :func:`check_real`)."""
    v = check_real(name, value)
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


def check_real(name: str, value) -> float:
    """``value`` as a float; ``TypeError`` naming ``name`` unless it is a real number — a
    Python or numpy number or a 0-d real tensor, not a string, a bool or a complex."""
    if isinstance(value, torch.Tensor) and value.dim() == 0 and value.dtype != torch.bool \
            and not value.is_complex():
        return float(value)
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number; got {type(value).__name__} {value!r}")
    return float(value)


def check_int(name: str, value, low=None, high=None) -> int:
    """``value`` as an int; ``TypeError`` unless it is an integer (not a bool, not a float),
    ``ValueError`` unless ``low <= value < high`` (each bound when given)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer; got {type(value).__name__} {value!r}")
    v = int(value)
    if (low is not None and v < low) or (high is not None and v >= high):
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must lie in [{lo}, {hi}); got {v}")
    return v


def check_bool(name: str, value) -> bool:
    """``value`` unless it is not a bool (``TypeError``: ``"no"`` is not ``False``)."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be True or False; got {type(value).__name__} {value!r}")
    return value


def check_sizes(value) -> list[int]:
    """Layer widths ``[n_0, ..., n_L]``: a list or tuple of at least two positive integers."""
    if not isinstance(value, (list, tuple)):
        raise TypeError("sizes must be a list of positive integers [n_0, ..., n_L]; "
                        f"got {type(value).__name__} {value!r}")
    sizes = [check_int(f"sizes[{k}]", n, low=1) for k, n in enumerate(value)]
    if len(sizes) < 2:
        raise ValueError("sizes must list at least two layer widths [n_0, ..., n_L], each >= 1; "
                         f"got {sizes}")
    return sizes


def check_dtype(name: str, value) -> torch.dtype:
    """One of :data:`FLOAT_DTYPES` (a ``torch.dtype``, not its name)."""
    if value not in FLOAT_DTYPES or not isinstance(value, torch.dtype):
        raise TypeError(f"{name} must be torch.float32 or torch.float64; got {value!r}")
    return value


def check_device(name: str, value) -> torch.device:
    """A ``torch.device`` (or its name) of a device that exists here: ``cpu``, or ``cuda``
    where CUDA is available."""
    if not isinstance(value, (str, torch.device)):
        raise TypeError(f"{name} must be a torch.device or a device name such as 'cpu'; "
                        f"got {type(value).__name__} {value!r}")
    try:
        device = torch.device(value)
    except RuntimeError:
        raise ValueError(f"{name} must name a torch device such as 'cpu' or 'cuda'; "
                         f"got {value!r}") from None
    if device.type == "cpu":
        return device
    if device.type == "cuda" and torch.cuda.is_available() and \
            (device.index is None or device.index < torch.cuda.device_count()):
        return device
    raise ValueError(f"{name} must be 'cpu' or an available CUDA device; got {value!r}"
                     f" (CUDA available: {torch.cuda.is_available()})")


def check_finite_matrix(what: str, value: torch.Tensor, cause: str = "") -> torch.Tensor:
    """``value`` unless it has a NaN or inf entry: then :class:`NumericalError` naming
    ``what`` and the likely ``cause`` (no LAPACK routine ever sees a non-finite matrix)."""
    if not all_finite(value):
        raise NumericalError(f"{what} has non-finite (NaN or inf) entries" +
                             (f": {cause}" if cause else ""))
    return value


def all_finite(value: torch.Tensor) -> bool:
    """Whether every entry is finite: the largest magnitude is (``amax`` propagates NaN). Two
    operations and one read back, where ``isfinite(value).all()`` takes five and one."""
    return value.numel() == 0 or math.isfinite(float(value.abs().amax()))


def check_tensor(name: str, value, width: int, dtype: torch.dtype, device: torch.device,
                 allow_1d: bool = True) -> torch.Tensor:
    """Validate a batched input: a (B, width) tensor of the model's dtype and device, finite.

    A 1-D tensor of length ``width`` is accepted as a batch of one when ``allow_1d``; an empty
    batch is not.
    """
    if not isinstance(value, torch.Tensor):
        raise ValueError(f"{name} must be a torch.Tensor of shape (batch, {width}); "
                         f"got {type(value).__name__}")
    if value.dim() == 1 and allow_1d:
        value = value.unsqueeze(0)
    if value.dim() != 2 or value.shape[1] != width:
        raise ValueError(f"{name} must have shape (batch, {width}); got {tuple(value.shape)}")
    if value.shape[0] == 0:
        raise ValueError(f"{name} must hold at least one example; got an empty batch "
                         f"{tuple(value.shape)}")
    if value.dtype != dtype:
        raise ValueError(f"{name} must have dtype {dtype} (the model's); got {value.dtype}")
    if value.device.type != torch.device(device).type:
        raise ValueError(f"{name} must be on device {device} (the model's); got {value.device}")
    if not all_finite(value):
        raise ValueError(f"{name} must be finite; it contains NaN or inf")
    return value
