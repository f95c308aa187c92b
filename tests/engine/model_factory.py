"""Tiny random bias-free models for engine tests (helpers; fixtures are in conftest.py).

Why random, not trained: the engine's contracts (tiling, homogeneity, dtype round
trips, registry) hold for any weights, and building tiny models takes a second.
Zero-initialised last layers and ScaleNorm stds are randomised so the models
really filter instead of starting as the identity.
"""

from __future__ import annotations

import numpy as np

TINY_CONFIGS = {
    # name: (kind, keyword arguments of its config)
    "gray": ("dncnn", {"channels": 1, "depth": 4, "width": 8}),
    "color": ("unet", {"channels": 3, "scales": 2, "width": 8, "convs": 1}),
    "resnet": (
        "resnet",
        {"channels": 1, "blocks": 1, "width": 8, "expand": 8, "gate": True, "squeeze_excite": True},
    ),
    "pyramid": ("multiscale", {"channels": 1, "levels": 2, "depth": 3, "width": 8}),
}


def exact_float32() -> None:
    """Run float32 convolutions in full float32, not TF32 as GPUs may by default.

    Why: tiling and homogeneity are checked to 1e-5; TF32 keeps 10 mantissa bits.
    """
    import keras

    if keras.backend.backend() == "tensorflow":
        import tensorflow as tf

        tf.config.experimental.enable_tensor_float_32_execution(False)
    elif keras.backend.backend() == "jax":
        import jax

        jax.config.update("jax_default_matmul_precision", "highest")


def architecture_config(kind: str, **kwargs):
    """A validated architecture config of ``kind`` ('dncnn', 'resnet', 'unet', 'multiscale')."""
    from src_models.config import DnCNNConfig, MultiscaleConfig, ResNetConfig, UNetConfig

    classes = {
        "dncnn": DnCNNConfig,
        "resnet": ResNetConfig,
        "unet": UNetConfig,
        "multiscale": MultiscaleConfig,
    }
    return classes[kind](**kwargs)


def randomize_weights(model, seed: int = 0) -> None:
    """Make a fresh model non-trivial: random zero-initialised kernels and ScaleNorm stds.

    Builders start residual nets as the identity (a zero last layer) and ScaleNorm
    at std 1; tests of tiling and homogeneity need a model that really filters.
    """
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        w = np.asarray(v.numpy())
        if w.ndim >= 2 and not w.any():
            fan_in = int(np.prod(w.shape[:-1]))
            v.assign((rng.standard_normal(w.shape) * np.sqrt(1.0 / fan_in)).astype("float32"))
    for v in model.non_trainable_variables:
        if v.path.endswith("moving_std"):
            v.assign(rng.uniform(0.5, 2.0, size=tuple(v.shape)).astype("float32"))


def randomize_vectors(model, seed: int = 0) -> None:
    """Draw every 1-D weight too: gammas in [0.5, 1.5], any bias ~ 0.3 N(0, 1).

    Why: builders start biases at zero, so a bias wrongly switched on in a signal-path
    layer would stay invisible to a homogeneity test on freshly built weights.
    """
    rng = np.random.default_rng(seed)
    for v in model.trainable_variables:
        shape = tuple(v.shape)
        if len(shape) == 1:
            gamma = v.path.endswith("gamma")
            w = rng.uniform(0.5, 1.5, shape) if gamma else rng.normal(0, 0.3, shape)
            v.assign(w.astype("float32"))


def tiny_model(kind: str, seed: int = 0, name: str | None = None, **kwargs):
    """Build a tiny random model and its card (receptive field measured, size multiple)."""
    import keras

    from src_models.architectures import (
        build_model,
        parameter_count,
        receptive_field,
        size_multiple,
    )
    from src_models.config import ModelCard

    exact_float32()
    keras.utils.set_random_seed(seed)
    config = architecture_config(kind, **kwargs)
    model = build_model(config, name=name)
    randomize_weights(model, seed)
    multiple = size_multiple(config)
    card = ModelCard(
        name=name or kind,
        description=f"tiny random {kind} for tests",
        channels=config.channels,
        kind=kind,
        parameters=parameter_count(model),
        receptive_field=receptive_field(model, multiple),
        size_multiple=multiple,
    )
    return model, card
