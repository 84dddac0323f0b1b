"""Data loading: names, splits, shapes, errors, minibatches."""
from __future__ import annotations

import numpy as np
import pytest

from projc.errors import DataError
from projc.train.data import load_data, minibatches


def test_digits_default_split_is_deterministic():
    a = load_data()
    b = load_data("digits", seed=0)
    c = load_data("digits", seed=1)
    assert a.name == "digits" and a.x_train.dtype == np.float32 and a.y_train.dtype == np.int64
    assert len(a.y_train) + len(a.y_test) == 1797 and len(a.y_test) == 359
    assert a.x_train.shape[1:] == (64,) and 0 <= a.x_train.min() and a.x_train.max() <= 1
    np.testing.assert_array_equal(a.x_test, b.x_test)
    assert not np.array_equal(a.y_test, c.y_test)
    assert a.num_classes == 10


def test_input_shape_reshapes():
    d = load_data("digits", input_shape=(None, 1, 8, 8))
    assert d.x_train.shape[1:] == (1, 8, 8)
    with pytest.raises(DataError, match="64 features, the model expects 784"):
        load_data("digits", input_shape=("B", 784))


def test_mnist5k():
    d = load_data("mnist5k")
    assert (len(d.y_train), len(d.y_test)) == (4000, 1000)
    assert d.x_train.shape[1:] == (784,) and d.x_train.max() <= 1.0


def test_npz(tmp_path):
    rng = np.random.default_rng(0)
    path = tmp_path / "d.npz"
    np.savez(path, X=rng.normal(size=(50, 3, 2)), y=rng.integers(0, 3, 50))
    d = load_data(f"npz:{path}", test_fraction=0.2)
    assert (len(d.y_train), len(d.y_test)) == (40, 10) and d.x_train.shape[1:] == (3, 2)
    d = load_data(f"npz:{path}", input_shape=[None, 6])
    assert d.x_train.shape[1:] == (6,)


def test_errors(tmp_path):
    with pytest.raises(DataError, match="unknown dataset 'cifar'.*digits"):
        load_data("cifar")
    with pytest.raises(DataError, match="no such file"):
        load_data(f"npz:{tmp_path}/missing.npz")
    np.savez(tmp_path / "nokey.npz", X=np.zeros((4, 2)))
    with pytest.raises(DataError, match="missing array.*y"):
        load_data(f"npz:{tmp_path}/nokey.npz")
    X = np.ones((10, 2))
    X[4, 1] = np.nan
    np.savez(tmp_path / "nan.npz", X=X, y=np.zeros(10, int))
    with pytest.raises(DataError, match="NaN or inf.*sample 4"):
        load_data(f"npz:{tmp_path}/nan.npz")
    np.savez(tmp_path / "neg.npz", X=np.ones((10, 2)), y=-np.ones(10, int))  # regression targets may
    assert load_data(f"npz:{tmp_path}/neg.npz").y_train.min() == -1          # be negative (class ids: the task)
    np.savez(tmp_path / "str.npz", X=np.ones((10, 2)), y=np.array(["a"] * 10))
    with pytest.raises(DataError, match="must be numbers"):
        load_data(f"npz:{tmp_path}/str.npz")
    np.savez(tmp_path / "len.npz", X=np.ones((10, 2)), y=np.zeros(9, int))
    with pytest.raises(DataError, match="X must be"):
        load_data(f"npz:{tmp_path}/len.npz")


def test_minibatches_shuffle_per_epoch():
    x = np.arange(10)[:, None].astype(np.float32)
    y = np.arange(10)
    batches = list(minibatches(x, y, 4, seed=3, epochs=2))
    assert len(batches) == 4 and all(len(b[1]) == 4 for b in batches)
    first = np.concatenate([b[1] for b in batches[:2]])
    second = np.concatenate([b[1] for b in batches[2:]])
    assert len(set(first)) == 8 and not np.array_equal(first, second)
    again = list(minibatches(x, y, 4, seed=3, epochs=2))
    assert all(np.array_equal(a[1], b[1]) for a, b in zip(batches, again))
    np.testing.assert_array_equal(batches[0][0][:, 0], batches[0][1])
    assert sum(len(b[1]) for b in minibatches(x, y, 4, drop_remainder=False)) == 10
