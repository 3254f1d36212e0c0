"""What a training run records, in memory and on disk."""

from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .diagnostics import LAYER_DIAGNOSTICS, SCALAR_DIAGNOSTICS
from .files import atomic_write


EVAL_KEYS = ("examples", "epoch", "batches", "sim_time", "wall_time", "step_wall_time",
             "train_loss", "train_accuracy", "test_loss", "test_accuracy")
# measured, not computed: kept out of trajectory.npz (which is then the same bytes for the same
# seed and configuration) and stored in summary.json's "timing" beside it
TIMED_KEYS = ("wall_time", "step_wall_time")

# ============================================================================================
# history
# ============================================================================================
@dataclass
class History:
    """Everything a :func:`train` run records (numpy arrays).

    Evaluation points (length ``n_eval``): ``examples`` seen, ``epoch`` (fractional),
    ``batches``, cumulative simulated time ``sim_time``, cumulative ``wall_time`` and
    ``step_wall_time`` (time spent in ``learner.step`` only), ``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy`` (accuracy NaN for regression).

    Diagnostic samples (length ``n_diag``): ``diag_examples``, ``diag_batches``,
    ``diag_sim_time`` and ``diagnostics[name]``: ``(n_diag, L)`` per layer for
    :data:`LAYER_DIAGNOSTICS`, ``(n_diag,)`` for :data:`SCALAR_DIAGNOSTICS`.
    """

    examples: np.ndarray
    epoch: np.ndarray
    batches: np.ndarray
    sim_time: np.ndarray
    wall_time: np.ndarray
    step_wall_time: np.ndarray
    train_loss: np.ndarray
    train_accuracy: np.ndarray
    test_loss: np.ndarray
    test_accuracy: np.ndarray
    diag_examples: np.ndarray
    diag_batches: np.ndarray
    diag_sim_time: np.ndarray
    diagnostics: dict = field(default_factory=dict)
    config: dict = field(default_factory=dict)

    @classmethod
    def from_records(cls, records: dict, depth: int, config: dict) -> "History":
        ev = {k: np.asarray(records["eval"][k], dtype=np.float64) for k in EVAL_KEYS}
        for k in ("examples", "batches"):
            ev[k] = ev[k].astype(np.int64)
        dg = records["diag"]
        diagnostics = {}
        for name, values in dg.items():
            if name in ("examples", "batches", "sim_time"):
                continue
            shape = (-1,) if name in SCALAR_DIAGNOSTICS else (-1, depth)
            diagnostics[name] = np.asarray(values, dtype=np.float64).reshape(shape)
        return cls(**ev, diag_examples=np.asarray(dg["examples"], dtype=np.int64),
                   diag_batches=np.asarray(dg["batches"], dtype=np.int64),
                   diag_sim_time=np.asarray(dg["sim_time"], dtype=np.float64),
                   diagnostics=diagnostics, config=dict(config))

    def arrays(self) -> dict:
        """Flat ``{key: array}``: the evaluation keys, ``diag_examples``, ``diag_batches``,
        ``diag_sim_time`` and ``diag_<name>`` for each diagnostic."""
        out = {k: getattr(self, k) for k in EVAL_KEYS}
        out.update(diag_examples=self.diag_examples, diag_batches=self.diag_batches,
                   diag_sim_time=self.diag_sim_time)
        out.update({f"diag_{k}": v for k, v in self.diagnostics.items()})
        return out

    def learning_curves(self) -> dict:
        """``{examples, train_loss, test_loss[, train_accuracy, test_accuracy]}`` for
        :func:`dendrite_sim.frontend.plots.plot_learning_curves`."""
        out = {"examples": self.examples, "train_loss": self.train_loss,
               "test_loss": self.test_loss}
        if np.isfinite(self.test_accuracy).any() or np.isfinite(self.train_accuracy).any():
            out.update(train_accuracy=self.train_accuracy, test_accuracy=self.test_accuracy)
        return out

    def final(self) -> dict:
        """The last evaluation point as plain floats (empty history: NaNs)."""
        out = {}
        for k in EVAL_KEYS:
            v = getattr(self, k)
            out[k] = float(v[-1]) if len(v) else float("nan")
        return out

    def to_npz(self, path) -> Path:
        """Write every array but the wall times (and the configuration as JSON text)
        atomically to ``path``, byte for byte the same for the same values (see
        :func:`write_npz`). The wall times go to :meth:`timing`, which :func:`train` stores
        in the ``summary.json`` beside it."""
        arrays = {k: v for k, v in self.arrays().items() if k not in TIMED_KEYS}
        arrays["config_json"] = np.array(json.dumps(self.config, default=str))
        return atomic_write(path, lambda f: write_npz(f, arrays))

    def timing(self) -> dict:
        """The measured wall times per evaluation point, as lists (for ``summary.json``)."""
        return {_timing_key(k): [float(v) for v in getattr(self, k)] for k in TIMED_KEYS}

    @classmethod
    def from_npz(cls, path) -> "History":
        """Read a ``trajectory.npz``; the wall times come from the ``summary.json`` beside it
        (NaN where it has none for these evaluation points)."""
        path = Path(path)
        with np.load(path, allow_pickle=False) as z:
            data = {k: z[k] for k in z.files}
        config = json.loads(str(data.pop("config_json"))) if "config_json" in data else {}
        diagnostics = {k[len("diag_"):]: data.pop(k) for k in list(data)
                       if k.startswith("diag_") and k not in
                       ("diag_examples", "diag_batches", "diag_sim_time")}
        n_eval = len(data["examples"])
        for key, values in _stored_timing(path.parent / "summary.json").items():
            if key not in data:
                data[key] = values if len(values) == n_eval else np.full(n_eval, np.nan)
        return cls(**{k: data[k] for k in EVAL_KEYS}, diag_examples=data["diag_examples"],
                   diag_batches=data["diag_batches"], diag_sim_time=data["diag_sim_time"],
                   diagnostics=diagnostics, config=config)


def _timing_key(name: str) -> str:
    return f"{name}_at_eval_s"


def _stored_timing(summary_path: Path) -> dict:
    """``{wall_time, step_wall_time}`` arrays from a run's ``summary.json`` (empty where the
    file or the lists are missing)."""
    try:
        timing = json.loads(summary_path.read_text()).get("timing", {})
    except (OSError, json.JSONDecodeError, AttributeError):
        timing = {}
    out = {}
    for name in TIMED_KEYS:
        values = timing.get(_timing_key(name))
        out[name] = np.asarray(values if isinstance(values, list) else [], dtype=np.float64)
    return out


def write_npz(handle, arrays: dict) -> None:
    """``np.savez_compressed`` with fixed member timestamps and permissions, so that the same
    arrays give the same bytes (numpy stamps each member with the current time)."""
    with zipfile.ZipFile(handle, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, value in arrays.items():
            member = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            member.compress_type = zipfile.ZIP_DEFLATED
            member.external_attr = 0o644 << 16
            with archive.open(member, "w", force_zip64=True) as stream:
                np.lib.format.write_array(stream, np.asanyarray(value), allow_pickle=False)


def _empty_records() -> dict:
    diag = {name: [] for name in LAYER_DIAGNOSTICS + SCALAR_DIAGNOSTICS}
    diag.update(examples=[], batches=[], sim_time=[])
    return {"eval": {k: [] for k in EVAL_KEYS}, "diag": diag}


# ============================================================================================
# atomic files
# ============================================================================================
def _write_json(path, obj) -> Path:
    text = json.dumps(obj, indent=2, default=str, allow_nan=True).encode()
    return atomic_write(path, lambda f: f.write(text))
