"""Every architecture is positively homogeneous: D(a*y) = a*D(y) for a > 0.

Why it matters: homogeneity makes scale normalisation in inference exact and
gives D(y) = J(y) y, the adaptive-filter view the plugin shows. Random weights
(with random ScaleNorm stds and non-zero last layers) are enough: the property
is structural, so it must hold for any weights.
"""

from __future__ import annotations

import numpy as np
import pytest
from model_factory import exact_float32, randomize_vectors, randomize_weights

from src_models.architectures import build_model
from src_models.config import DnCNNConfig, MultiscaleConfig, ResNetConfig, UNetConfig

CONFIGS = {
    "dncnn": DnCNNConfig(depth=4, width=8),
    "dncnn_leaky_color": DnCNNConfig(depth=3, width=8, channels=3, activation="leaky_relu"),
    "dncnn_unshuffle2": DnCNNConfig(depth=3, width=8, unshuffle=2),
    "dncnn_unshuffle4": DnCNNConfig(depth=3, width=8, unshuffle=4),
    "resnet_gate_se": ResNetConfig(blocks=2, width=8, expand=8, gate=True, squeeze_excite=True),
    "resnet_plain_not_residual": ResNetConfig(blocks=1, width=8, expand=8, residual=False),
    "unet": UNetConfig(scales=3, width=8, convs=1, norm=True),
    "unet_unshuffle_color": UNetConfig(scales=2, width=8, convs=1, unshuffle=2, channels=3),
    "unet_guided_color": UNetConfig(
        scales=2, width=8, convs=1, unshuffle=2, channels=3, channel_mode="guided"
    ),
    "unet_opponent_color": UNetConfig(
        scales=2, width=8, convs=1, unshuffle=2, channels=3, channel_mode="opponent"
    ),
    "multiscale_laplacian": MultiscaleConfig(levels=3, depth=3, width=8, pyramid="laplacian"),
    "multiscale_gaussian": MultiscaleConfig(levels=3, depth=3, width=8, pyramid="gaussian"),
}


def _relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.mark.parametrize("name", list(CONFIGS))
def test_every_architecture_is_positively_homogeneous(name):
    exact_float32()
    config = CONFIGS[name]
    model = build_model(config)
    randomize_weights(model, seed=3)
    randomize_vectors(model, seed=4)  # a bias switched on anywhere would now show
    rng = np.random.default_rng(1)
    y = rng.uniform(0.0, 1.0, size=(2, 32, 32, config.channels)).astype("float32")
    base = np.asarray(model(y, training=False))
    assert _relative(base, y) > 1e-3  # the model really transforms its input
    for a in (1e-12, 0.25, 2.0, 10.0, 1e6):  # tiny physical units too: no epsilon anywhere
        scaled = np.asarray(model(np.float32(a) * y, training=False))
        assert _relative(scaled, np.float32(a) * base) < 1e-4, (name, a)


def test_soft_orthogonality_is_zero_for_orthonormal_kernels_wide_or_tall():
    from src_models.layers import KernelRegularizer

    reg = KernelRegularizer(orthogonal=1.0)
    rng = np.random.default_rng(0)
    tall = np.linalg.qr(rng.normal(size=(63, 16)))[0].astype(np.float32)  # columns orthonormal
    wide = np.linalg.qr(rng.normal(size=(64, 64)))[0][:9].astype(np.float32)  # rows orthonormal
    assert float(reg(tall.reshape(3, 3, 7, 16))) < 1e-8
    assert float(reg(wide.reshape(3, 3, 1, 64))) < 1e-8  # was 64 - 9 = 55: W^T W can't be I
    assert float(reg(2 * wide.reshape(3, 3, 1, 64))) == pytest.approx(81, rel=1e-4)  # |4I - I|^2
