"""Fast paths added for the cost of a CP step, each against the slower exact path it replaces:
the bilinear root by Newton in t (now also the dot family's), tiling patch views, and sums and
means over any axes projected in place."""
from __future__ import annotations

from types import SimpleNamespace

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projc.backends.jax import families as F
from projc.backends.jax import projections as P
from projc.backends.jax.proj_bilinear import root_parts
from projc.backends.jax.proj_root_near import root_parts_near
from projc.ops.convolution import geometry, is_tiling, patch_stack, shifted


@pytest.fixture
def x64():
    with jax.enable_x64(True):
        yield


@pytest.mark.parametrize("spread", [0.3, 30.0])   # roots within ½ (Newton in t); some far (fallback)
@pytest.mark.parametrize("with_p", [False, True])
def test_root_parts_near_equals_root_parts(x64, spread, with_p):
    rng = np.random.default_rng(7)
    a0, b0 = rng.normal(size=(2, 500, 6)) * spread
    y0 = np.sum(a0 * b0, -1) + rng.normal(size=500) * spread
    U, V = 0.5 * np.sum((a0 + b0) ** 2, -1), 0.5 * np.sum((a0 - b0) ** 2, -1)
    p = np.sum(a0 * b0, -1) if with_p else None
    near = root_parts_near(*map(jnp.asarray, (U, V, y0)), p=p)
    full = root_parts(*map(jnp.asarray, (U, V, y0)), 60, p=p)
    assert np.array_equal(near[0], full[0])                                  # the orientation
    np.testing.assert_allclose(near[1], full[1], rtol=1e-12, atol=1e-15)     # ts
    np.testing.assert_allclose(near[2], full[2], rtol=1e-12)                 # α = 1 - ts
    ts = np.asarray(near[1])
    g = ts + 0.5 * (near[4] / (1 - ts) ** 2 - near[5] / (1 + ts) ** 2) - near[6]
    assert np.max(np.abs(g)) < 1e-9 * max(1.0, float(np.max(np.abs(near[6]))))
    if spread < 1:
        assert np.all(ts <= 0.5)   # the Newton-in-t branch ran (every root within ½)


@pytest.mark.parametrize("shape,kernel", [((3, 8, 8, 5), (2, 2)), ((2, 9, 7, 3), (2, 2)), ((2, 9, 4), (3,)),
                                          ((2, 6, 6, 4, 2), (2, 3, 2)), ((2, 4, 4, 3), (4, 4))])
def test_tiling_patch_stack_equals_the_strided_slices(x64, shape, kernel):
    geo = geometry({"strides": list(kernel)}, kernel)
    assert is_tiling(geo) and not is_tiling(geometry({"strides": [1] * len(kernel)}, kernel))
    x = np.random.default_rng(3).normal(size=shape)
    slow = lambda v: jnp.stack(shifted(v, geo), axis=-1)  # noqa: E731
    fast = jax.jit(lambda v: patch_stack(v, geo))
    assert np.array_equal(fast(x), slow(jnp.asarray(x)))
    spec = jax.ShapeDtypeStruct(shape, jnp.float64)
    g = np.random.default_rng(4).normal(size=fast(x).shape)
    back_fast = jax.linear_transpose(lambda v: patch_stack(v, geo), spec)(g)[0]
    back_slow = jax.linear_transpose(slow, spec)(g)[0]
    assert np.array_equal(back_fast, back_slow)   # the col2im a consensus layout runs


@pytest.mark.parametrize("axes", [[1, 3], [2], [0, 1, 2, 3], None])
@pytest.mark.parametrize("kind", ["mean", "mean-euclidean", "reduce_sum"])
def test_in_place_reductions_equal_the_flattened_projection(x64, axes, kind):
    rng = np.random.default_rng(11)
    a = rng.normal(size=(3, 4, 5, 2))
    red = tuple(range(4)) if axes is None else tuple(axes)
    keep = [i for i in range(4) if i not in red]
    y0 = rng.normal(size=tuple(a.shape[i] for i in keep))
    params = {"metric": "euclidean"} if kind == "mean-euclidean" else {}
    if axes is not None:
        params["axes"] = axes
    fam = SimpleNamespace(op=SimpleNamespace(params=params))
    project = F._project_reduce_sum if kind == "reduce_sum" else F._project_mean
    (got,), y = project(fam, {0: jnp.asarray(a)}, jnp.asarray(y0), None)
    flat = np.transpose(a, keep + list(red)).reshape(y0.shape + (-1,))
    if kind == "reduce_sum":
        want, want_y = P.sum_reduce(flat, y0)
    else:
        want, want_y = P.mean(flat, y0, weight=1.0 if kind == "mean-euclidean" else None)
    want = np.transpose(np.reshape(want, tuple(a.shape[i] for i in keep + list(red))), np.argsort(keep + list(red)))
    np.testing.assert_allclose(got, want, rtol=1e-13, atol=1e-13)
    np.testing.assert_allclose(y, want_y, rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("axes", [(1, 2), (0, 3), (2,)])
def test_max_over_axes_equals_the_last_axis_projection(x64, axes):
    """The global-max projection in place (its count and sum in one variadic reduction) against
    projections.max on the reduced axes moved last; ties: only the first argmax rises."""
    from projc.backends.jax.proj_pool import max_over_axes
    rng = np.random.default_rng(2)
    a = np.round(rng.normal(size=(3, 4, 5, 6)) * 2) / 2        # many ties at the max
    keep = [i for i in range(4) if i not in axes]
    y0 = rng.normal(size=tuple(a.shape[i] for i in keep)) * 3 + 1
    got, y = max_over_axes(jnp.asarray(a), jnp.asarray(y0), axes)
    perm = keep + list(axes)
    flat = np.transpose(a, perm).reshape(y0.shape + (-1,))
    want, want_y = P.max(flat, y0)
    want = np.transpose(np.reshape(want, tuple(a.shape[i] for i in perm)), np.argsort(perm))
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(y, want_y, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(np.max(got, axis=axes), y, rtol=1e-12, atol=1e-12)   # on the graph
