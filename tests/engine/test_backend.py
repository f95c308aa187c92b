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


@pytest.mark.parametrize("xla", [False, True], ids=["graph", "xla"])
def test_compiled_predict_with_xla_matches_and_stays_homogeneous(model, xla):
    predict = compiled_predict(model, xla=xla)
    x = np.random.default_rng(3).uniform(0, 1, size=(2, 32, 40, 1)).astype("float32")
    out = predict(x)
    np.testing.assert_allclose(out, np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6)
    scaled = predict(7.5 * x)
    assert np.linalg.norm(scaled - 7.5 * out) / np.linalg.norm(7.5 * out) < 1e-5


def test_xla_falls_back_to_a_plain_graph_whenever_a_compile_fails(model, monkeypatch):
    """XLA compiles once per batch size: a failure on a later call falls back too."""
    import tensorflow as tf

    real = tf.function
    calls = []

    class FailsForBatchOfThree:  # XLA that cannot compile one batch size
        def __init__(self, f):
            self.f = real(f)

        def get_concrete_function(self, spec):
            graph = self.f.get_concrete_function(spec)

            def run(x):
                calls.append(int(x.shape[0]))
                if x.shape[0] == 3:
                    raise tf.errors.InvalidArgumentError(None, None, "XLA cannot compile this")
                return graph(x)

            return run

    def fake_function(f=None, jit_compile=None, **kwargs):  # only compiled_predict's own
        if jit_compile and getattr(f, "__module__", "") == "src_models.backend":
            return FailsForBatchOfThree(f)
        return real(f, jit_compile=jit_compile, **kwargs)

    monkeypatch.setattr(tf, "function", fake_function)
    predict = compiled_predict(model, xla=True)
    rng = np.random.default_rng(5)
    for n in (1, 3, 3, 1):  # the second batch size fails to "compile"
        x = rng.uniform(0, 1, size=(n, 24, 24, 1)).astype("float32")
        np.testing.assert_allclose(
            predict(x), np.asarray(model(x, training=False)), rtol=1e-5, atol=1e-6
        )
    assert calls == [1, 3]  # after the failure the shape runs on the plain graph only


def test_xla_is_used_for_wide_networks_unless_the_environment_says_otherwise(monkeypatch):
    from types import SimpleNamespace

    from src_models.inference import ENV_XLA, use_xla

    def card(width):
        return SimpleNamespace(recipe=SimpleNamespace(architecture=SimpleNamespace(width=width)))

    monkeypatch.delenv(ENV_XLA, raising=False)
    assert use_xla(card(32)) and not use_xla(card(16))
    assert not use_xla(SimpleNamespace(recipe=None))  # a card without a recipe: plain graph
    monkeypatch.setenv(ENV_XLA, "0")
    assert not use_xla(card(32))
    monkeypatch.setenv(ENV_XLA, "1")
    assert use_xla(card(16))


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
