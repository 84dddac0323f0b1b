"""The grid-free sum_smooth path (proj_smooth_fast) against the grid search it replaces
(proj_smooth.solve_sum, the slow exact path) and against the float64 brute-force oracle
(tests/oracle_1d.py), for every function it serves: the same minimizer, up to rounding."""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from oracle_1d import oracle, random_points, smooth_forward

from projc.backends.jax import proj_smooth as PS
from projc.backends.jax import proj_smooth_fast as PF


def _costs(fn, S, S0, y0, n):
    f = smooth_forward(fn)
    with np.errstate(over="ignore", invalid="ignore"):
        c = (S - S0) ** 2 / n + (f(S) - y0) ** 2
    return np.where(np.isnan(c), np.inf, c)


def _solve_both(fn, S0, y0, n, mag, dtype):
    """(grid S, fast S) per point, solved in ``dtype`` (n varies per point: vmap)."""
    with jax.enable_x64(dtype == jnp.float64):
        args = [jnp.asarray(v, dtype) for v in (S0, y0, n, mag)]
        out = [np.asarray(jax.jit(jax.vmap(lambda a, b, k, m, mod=mod: mod.solve_sum(fn, a, b, k, mag=m)))(*args),
                          np.float64) for mod in (PS, PF)]
    return out[0], out[1]


def _points(fn, seed, M=800):
    S0, y0, n, mag = random_points(np.random.default_rng(seed), M)
    if fn in ("sigmoid", "one_minus_sigmoid", "tanh"):   # targets in and around the range as well
        y0[: M // 3] = np.random.default_rng(seed + 1).uniform(-1.5, 1.5, M // 3)
    return S0, y0, n, mag


@pytest.mark.parametrize("fn", PF.FAST_FNS)
def test_fast_matches_grid_and_oracle_f64(fn):
    S0, y0, n, mag = _points(fn, 3)
    grid, fast = _solve_both(fn, S0, y0, n, mag, jnp.float64)
    cg, cf = _costs(fn, grid, S0, y0, n), _costs(fn, fast, S0, y0, n)
    assert np.all(np.isfinite(cf) | (fast == S0)), fn
    scale = S0 ** 2 / n + y0 ** 2
    # never worse than the grid search (a better point is a minimum the grid missed)
    worse = cf - cg > 1e-9 * cg + 1e-13 * scale
    assert not worse.any(), (fn, S0[worse][:5], y0[worse][:5], n[worse][:5])
    with jax.enable_x64(True):
        ivs = [(np.asarray(a), np.asarray(b))
               for a, b in PS.search_domains(fn, jnp.float64, jnp.asarray(n), jnp.asarray(mag))]
    best, _ = oracle(smooth_forward(fn), S0, y0, n, ivs, stay=np.isfinite(smooth_forward(fn)(S0)))
    gap = cf - best
    assert np.all(gap <= 1e-8 * best + 1e-12 * scale), (fn, float(np.max(gap / (best + 1e-300))))


@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "one_minus_sigmoid", "exp"])
def test_fast_matches_grid_f32(fn):
    """float32 (training's dtype): the two paths' costs agree up to float32 rounding of S."""
    S0, y0, n, mag = _points(fn, 5)
    keep = (np.abs(S0) < 1e3) & (np.abs(y0) < 1e3)
    S0, y0, n, mag = S0[keep], y0[keep], n[keep], mag[keep]
    grid, fast = _solve_both(fn, S0, y0, n, mag, jnp.float32)
    cg, cf = _costs(fn, grid, S0, y0, n), _costs(fn, fast, S0, y0, n)
    round_off = 1e-4 * cg + 1e-6 * (1 + np.abs(S0) + np.abs(y0)) ** 2
    assert np.all(cf - cg <= round_off), (fn, float(np.max(cf - cg - round_off)))


@pytest.mark.parametrize("fn", ["sigmoid", "tanh", "one_minus_sigmoid"])
def test_two_falling_intervals(fn):
    """Targets inside the range with many operands: g falls on two intervals at once, and the
    minimum may sit on any of the three increasing pieces; each piece's root is a candidate."""
    lo, hi = (-1.0, 1.0) if fn == "tanh" else (0.0, 1.0)
    y0 = np.repeat(np.linspace(lo + 0.05, hi - 0.05, 7), 41)
    S0 = np.tile(np.linspace(-12, 12, 41), 7)
    n = np.full_like(S0, 400.0)
    with jax.enable_x64(True):
        breaks = PF._breaks(fn, jnp.asarray(S0), jnp.asarray(y0), 400)
    both = np.asarray(breaks[0][2]) & np.asarray(breaks[1][2])
    assert both.sum() >= 3 * 41, (fn, both.sum())   # g falls on two intervals for most targets here
    for (a1, a2, _), (b1, _, _) in zip(breaks, breaks[1:]):
        assert np.all(np.asarray(a1)[both] < np.asarray(a2)[both])
        assert np.all(np.asarray(a2)[both] < np.asarray(b1)[both])
    grid, fast = _solve_both(fn, S0, y0, n, np.abs(S0), jnp.float64)
    cg, cf = _costs(fn, grid, S0, y0, n), _costs(fn, fast, S0, y0, n)
    assert np.all(np.abs(cf - cg) <= 1e-9 * cg + 1e-13), fn
