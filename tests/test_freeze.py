"""Frozen initializers: constants of the compiled graph, exactly fixed; the per-element piece tables
a constant operand creates project like the plain table on the shifted sum."""
import numpy as np
import pytest

import projc
from projc.backends.jax import proj_pwl as P
from projc.errors import ParamError

MLP = "models/mlp_digits.onnx"


def test_sum_pwl_with_per_element_table_matches_the_shifted_projection():
    rng = np.random.default_rng(0)
    a, y, c = (rng.normal(size=(6, 5)).astype(np.float32) for _ in range(3))
    c = c[0]  # a constant operand broadcast over the batch, as a frozen bias
    lo, hi, sl, ic = (np.asarray(f, np.float32) for f in P.resolve("relu"))
    ce = c[..., None]
    shifted = P.Pieces(lo - ce, hi - ce, np.broadcast_to(sl, ce.shape[:-1] + sl.shape), ic + sl * ce)
    a2, y2 = P.sum_pwl(a, y, fn=shifted)
    # oracle: project (a + c, y) onto y = relu(s), then subtract c again
    s_ref, y_ref = P.sum_pwl(a + c, y, fn="relu")
    np.testing.assert_allclose(np.asarray(a2), np.asarray(s_ref) - c, atol=1e-5)
    np.testing.assert_allclose(np.asarray(y2), np.asarray(y_ref), atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("frozen", [["fc1.bias"], ["fc2.weight", "fc2.bias"]])
def test_frozen_initializers_never_move(frozen):
    data = projc.load_data("digits")
    trainer = projc.compile(MLP, steps_per_update=3, freeze=frozen)
    assert sorted(set(trainer.param_names) | set(frozen)) == ["fc1.bias", "fc1.weight", "fc2.bias",
                                                                 "fc2.weight"]
    params = trainer.init_params()
    new, _st, _ = trainer.update(params, trainer.init_state(params), data.x_train[:64], data.y_train[:64])
    assert set(new) == set(params) and all(np.all(np.isfinite(np.asarray(v))) for v in new.values())
    assert any(not np.array_equal(np.asarray(new[k]), params[k]) for k in new)


def test_freeze_errors():
    with pytest.raises(ParamError, match="trainable: fc1.weight, fc1.bias"):
        projc.compile(MLP, freeze=["nope"])
    with pytest.raises(ParamError, match="nothing is left to train"):
        projc.compile(MLP, freeze=["fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias"])
