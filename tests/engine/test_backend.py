"""Compiled inference and autodiff agree with the eager model and with each other."""

from __future__ import annotations

import numpy as np
import pytest

from src_models.backend import compiled_jvp, compiled_predict, compiled_vjp


@pytest.fixture(scope="module")
def model(tiny_models):
    return tiny_models["gray"].model


def test_compiled_predict_matches_the_eager_model_for_any_shape(model):
    predict = compiled_predict(model)
    rng = np.random.default_rng(0)
    for shape in [(1, 24, 24, 1), (3, 24, 24, 1), (2, 17, 30, 1)]:
        x = rng.uniform(0, 1, size=shape).astype("float32")
        out = predict(x)
        assert out.dtype == np.float32 and out.shape == shape
        np.testing.assert_allclose(out, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)


def test_jvp_along_the_input_gives_the_output(model):
    """Euler's theorem for a homogeneous net: J(y) y = D(y)."""
    y = np.random.default_rng(1).uniform(0, 1, size=(1, 24, 24, 1)).astype("float32")
    out, jy = compiled_jvp(model)(y, y)
    assert np.linalg.norm(jy - out) / np.linalg.norm(out) < 1e-4


def test_vjp_is_the_adjoint_of_jvp(model):
    rng = np.random.default_rng(2)
    y, u, v = (rng.uniform(0, 1, size=(1, 20, 20, 1)).astype("float32") for _ in range(3))
    _, jv = compiled_jvp(model)(y, v)
    out, jtu = compiled_vjp(model)(y, u)
    assert out.shape == y.shape
    assert float(np.sum(u * jv)) == pytest.approx(float(np.sum(jtu * v)), rel=1e-4)
