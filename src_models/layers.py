"""Bias-free building blocks: every operation on the signal path is positively homogeneous.

Why: a network built only from these satisfies D(a*y) = a*D(y) for a > 0, so
its output is exactly D(y) = J(y) y, a locally adaptive linear filter we can show.
Convolutions come from Keras with ``use_bias=False``; the layers here add what
Keras lacks: a normalisation that only divides, gates whose values are
scale-invariant (degree 0), biases proportional to a local noise estimate (degree 1,
like the signal), and pixel (un)shuffle. All use ``keras.ops`` only,
so the same code runs under TensorFlow and JAX.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

__all__ = [
    "BatchToChannels",
    "ChannelsToBatch",
    "ChannelsToGuidedBatch",
    "ChromaPedestal",
    "DepthToSpace",
    "KernelRegularizer",
    "LocalSqueezeExcite",
    "NoiseBias",
    "NoiseLevelMap",
    "OpponentColor",
    "ScaleNorm",
    "SpaceToDepth",
    "SpatialGate",
]

_PKG = "bfcnn"


@keras.saving.register_keras_serializable(package=_PKG)
class ScaleNorm(keras.layers.Layer):
    """Bias-free batch normalisation: ``x * gamma / std``, never subtracting a mean.

    Keras' ``BatchNormalization(center=False)`` still subtracts the moving mean,
    which adds a constant; this layer only divides. In training the batch standard
    deviation is used; at inference a running one, so inference is a fixed
    per-channel scale and the network stays exactly homogeneous.

    ``frozen_std = True`` (set at run time, never saved) makes training divide by
    the running value too and leaves it unchanged. Fine-tuning a trained model
    needs that: small batches of new data (text, microscopy) have other feature
    statistics than the original training set, and updating the running value
    with them shifts every layer's scale at inference (the bundled gray model
    lost 3 to 8 dB in its first 50 fine-tuning steps, 1 dB even with a learning
    rate of 1e-7), whereas with frozen statistics training optimises exactly the
    network that inference runs.

    Parameters
    ----------
    momentum : float
        Weight of the old running value in the exponential moving average.
    epsilon : float
        Added to the batch variance in training only.
    """

    frozen_std: bool = False

    def __init__(self, momentum: float = 0.99, epsilon: float = 1e-5, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"ScaleNorm expected 0 <= momentum < 1. Received: momentum={momentum}")
        if epsilon <= 0:
            raise ValueError(f"ScaleNorm expected epsilon > 0. Received: epsilon={epsilon}")
        self.momentum = float(momentum)
        self.epsilon = float(epsilon)

    def build(self, input_shape):
        c = input_shape[-1]
        self.gamma = self.add_weight(shape=(c,), initializer="ones", name="gamma")
        self.moving_std = self.add_weight(
            shape=(c,), initializer="ones", trainable=False, name="moving_std"
        )

    def call(self, x, training=None):
        if training and not self.frozen_std:
            axes = tuple(range(len(x.shape) - 1))
            std = ops.sqrt(ops.var(x, axis=axes) + self.epsilon)
            m = self.momentum
            self.moving_std.assign(m * self.moving_std + (1.0 - m) * ops.stop_gradient(std))
        else:
            std = self.moving_std
        return x * ops.cast(self.gamma / std, x.dtype)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum, "epsilon": self.epsilon}


def _safe_sqrt(power):
    """sqrt(power), 1 where power is 0 (features all zero there: what it divides is 0 too).

    Why not ``sqrt(power + eps)``: an epsilon is an additive constant, so a gate built on
    it would stop being scale-free for features near ``sqrt(eps)``, i.e. for data in tiny
    physical units; this is exactly scale-free for any power > 0, and its gradient is
    finite everywhere.
    """
    return ops.sqrt(ops.where(power > 0, power, ops.ones_like(power)))


def _channel_rms(x, axis=-1):
    return _safe_sqrt(ops.mean(ops.square(x), axis=axis, keepdims=True))


@keras.saving.register_keras_serializable(package=_PKG)
class SpatialGate(keras.layers.Layer):
    """Multiply features by a per-pixel gate in (0, 1) computed from scale-free features.

    The gate sees ``x / rms_c(x)`` (each pixel's features divided by their RMS over
    channels), which is invariant to the input's scale, so the gate is degree 0
    and ``x * gate`` stays degree 1. The statistic is per pixel, so the receptive
    field stays finite and tiling stays exact.
    """

    def __init__(self, kernel_size: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.kernel_size = int(kernel_size)
        self.conv = keras.layers.Conv2D(1, self.kernel_size, padding="same", name="gate_conv")

    def build(self, input_shape):
        self.conv.build(tuple(input_shape))

    def call(self, x):
        gate = ops.sigmoid(self.conv(x / _channel_rms(x)))
        return x * gate

    def get_config(self):
        return {**super().get_config(), "kernel_size": self.kernel_size}


@keras.saving.register_keras_serializable(package=_PKG)
class LocalSqueezeExcite(keras.layers.Layer):
    """Squeeze-excite with local, scale-invariant descriptors.

    A global average pool would make every output pixel depend on the whole
    image (tiled != untiled), and raw averages would make the gate depend on the
    scale. Here the descriptor is a ``window``-sized local average of the
    features divided by their local RMS: degree 0, finite receptive field.
    """

    def __init__(self, ratio: int = 4, window: int = 9, **kwargs):
        super().__init__(**kwargs)
        if ratio < 1 or window < 1:
            raise ValueError(
                f"LocalSqueezeExcite expected ratio >= 1 and window >= 1. "
                f"Received: ratio={ratio}, window={window}"
            )
        self.ratio = int(ratio)
        self.window = int(window)
        self.pool = keras.layers.AveragePooling2D(self.window, strides=1, padding="same")

    def build(self, input_shape):
        c = int(input_shape[-1])
        hidden = max(1, c // self.ratio)
        self.reduce = keras.layers.Conv2D(hidden, 1, activation="relu", name="se_reduce")
        self.expand = keras.layers.Conv2D(c, 1, activation="sigmoid", name="se_expand")
        self.reduce.build(tuple(input_shape))
        self.expand.build(tuple(input_shape[:-1]) + (hidden,))

    def call(self, x):
        mean = self.pool(x)
        power = self.pool(ops.mean(ops.square(x), axis=-1, keepdims=True))
        descriptor = mean / _safe_sqrt(power)
        return x * self.expand(self.reduce(descriptor))

    def get_config(self):
        return {**super().get_config(), "ratio": self.ratio, "window": self.window}


@keras.saving.register_keras_serializable(package=_PKG)
class SpaceToDepth(keras.layers.Layer):
    """Pixel unshuffle: (H, W, C) -> (H/b, W/b, b*b*C). A permutation, hence linear."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        if block < 1:
            raise ValueError(f"SpaceToDepth expected block >= 1. Received: block={block}")
        self.block = int(block)

    def call(self, x):
        b = self.block
        shape = ops.shape(x)
        n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
        x = ops.reshape(x, (n, h // b, b, w // b, b, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (n, h // b, w // b, b * b * c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)

    def get_config(self):
        return {**super().get_config(), "block": self.block}


@keras.saving.register_keras_serializable(package=_PKG)
class DepthToSpace(keras.layers.Layer):
    """Pixel shuffle, the inverse of :class:`SpaceToDepth`."""

    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        if block < 1:
            raise ValueError(f"DepthToSpace expected block >= 1. Received: block={block}")
        self.block = int(block)

    def call(self, x):
        b = self.block
        shape = ops.shape(x)
        n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1] // (b * b)
        x = ops.reshape(x, (n, h, w, b, b, c))
        x = ops.transpose(x, (0, 1, 3, 2, 4, 5))
        return ops.reshape(x, (n, h * b, w * b, c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b))

    def get_config(self):
        return {**super().get_config(), "block": self.block}


@keras.saving.register_keras_serializable(package=_PKG)
class ChannelsToGuidedBatch(keras.layers.Layer):
    """(N, H, W, C) -> (N*C, H, W, 2): each channel beside the mean of all channels.

    Why: a colour image denoised one channel at a time by one shared network, each
    channel guided by the luminance (whose noise is sqrt(C) times weaker and whose
    edges every channel shares). Stacking and averaging are linear, so the network
    stays homogeneous.
    """

    def call(self, x):
        shape = ops.shape(x)
        n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
        guide = ops.broadcast_to(ops.mean(x, axis=-1, keepdims=True), ops.shape(x))
        pairs = ops.stack([x, guide], axis=-1)  # (N, H, W, C, 2)
        pairs = ops.transpose(pairs, (0, 3, 1, 2, 4))
        return ops.reshape(pairs, (n * c, h, w, 2))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (None if n is None else n * c, h, w, 2)


@keras.saving.register_keras_serializable(package=_PKG)
class BatchToChannels(keras.layers.Layer):
    """(N*C, H, W, 1) -> (N, H, W, C), the inverse of :class:`ChannelsToGuidedBatch`'s stacking."""

    def __init__(self, channels: int = 3, **kwargs):
        super().__init__(**kwargs)
        if channels < 1:
            raise ValueError(
                f"BatchToChannels expected channels >= 1. Received: channels={channels}"
            )
        self.channels = int(channels)

    def call(self, x):
        shape = ops.shape(x)
        c = self.channels
        x = ops.reshape(x, (shape[0] // c, c, shape[1], shape[2]))
        return ops.transpose(x, (0, 2, 3, 1))

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        return (None if n is None else n // self.channels, h, w, self.channels)

    def get_config(self):
        return {**super().get_config(), "channels": self.channels}


# orthonormal opponent colour basis (rows): luminance, red-blue, green-magenta
_OPPONENT = (
    (3**-0.5, 3**-0.5, 3**-0.5),
    (2**-0.5, 0.0, -(2**-0.5)),
    (6**-0.5, -2 * 6**-0.5, 6**-0.5),
)


@keras.saving.register_keras_serializable(package=_PKG)
class OpponentColor(keras.layers.Layer):
    """RGB <-> an orthonormal opponent basis (luminance and two colour differences).

    Why: white noise of one sigma per RGB channel stays white with the same sigma in
    any orthonormal basis, while the signal concentrates in the luminance and the two
    colour-difference planes are smooth, which is where a colour denoiser wins over
    denoising R, G and B separately (CBM3D's opponent transform). A fixed orthogonal
    matrix: linear, so the network stays homogeneous; ``inverse=True`` is its transpose.
    """

    def __init__(self, inverse: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.inverse = bool(inverse)

    def call(self, x):
        m = ops.convert_to_tensor(_OPPONENT, dtype=x.dtype)
        # forward: out_i = sum_j m[i, j] x_j, i.e. x @ m.T; inverse: x @ m
        return ops.matmul(x, m if self.inverse else ops.transpose(m))

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "inverse": self.inverse}


def _along(t, axis: int, start: int, from_end: int):
    """``t`` cut along ``axis`` to ``[start, len - from_end)`` (static offsets, any length)."""
    index = [slice(None)] * 4
    index[axis] = slice(start, -from_end if from_end else None)
    return t[tuple(index)]


def _doubling_windows(x, w: int, axis: int, combine, pad_value: float = 0.0) -> dict:
    """``{b: t}`` for b = 1, 2, 4, ... <= w; ``t[j]`` combines ``xp[j .. j + b - 1]`` along
    ``axis``, where ``xp`` is ``x`` with ``w // 2`` values ``pad_value`` added at both ends
    of that axis.

    Why: pooling a ``w``-wide window costs ``w`` operations per pixel; built by doubling,
    any window costs about ``2 log2 w`` (a 129-px box otherwise outweighs a small network).
    Each value depends only on its own window, in a fixed order: tiles agree bit for bit.
    """
    pad = [(0, 0)] * 4
    pad[axis] = (w // 2, w // 2)
    windows = {1: ops.pad(x, pad, constant_values=pad_value)}
    b = 1
    while 2 * b <= w:
        windows[2 * b] = combine(_along(windows[b], axis, 0, b), _along(windows[b], axis, b, 0))
        b *= 2
    return windows


def _box_sum_1d(x, w: int, axis: int):
    """Sum of each odd ``w``-wide window along ``axis`` (1 or 2), zeros outside the image."""
    windows = _doubling_windows(x, w, axis, ops.add)
    # disjoint power-of-two windows, one per set bit of w, side by side
    total, offset = None, 0
    for b in sorted(windows, reverse=True):
        if w & b:
            part = _along(windows[b], axis, offset, w - b - offset)
            total = part if total is None else total + part
            offset += b
    return total


def _box(x, w: int):
    """Separable ``w``-wide box mean; "same" averages over the pixels inside the image only.

    ``w`` odd. The same numbers as ``average_pool(..., padding="same")`` to float rounding,
    at a cost that grows with ``log w`` instead of ``w``.
    """
    for axis, thin in ((1, x[:1, :, :1, :1]), (2, x[:1, :1, :, :1])):
        count = _box_sum_1d(ops.ones_like(thin), w, axis)  # pixels inside the image
        x = _box_sum_1d(x, w, axis) / count
    return x


def _max_filter_nonneg(x, w: int):
    """``w``-wide (odd) square max filter of a non-negative image, "same" size.

    Zero padding equals ignoring the outside for values >= 0, which is what
    ``max_pool(..., padding="same")`` does, at ``log w`` cost.
    """
    return _extremum_filter(x, w, ops.maximum, 0.0)


def _min_filter(x, w: int):
    """``w``-wide (odd) square min filter, "same" size, ignoring what is outside the image.

    Padding with the largest float leaves every window's minimum to its pixels inside the
    image (each window holds at least its own centre), at ``log w`` cost.
    """
    big = float(np.finfo(keras.backend.standardize_dtype(x.dtype)).max)
    return _extremum_filter(x, w, ops.minimum, big)


def _extremum_filter(x, w: int, combine, pad_value: float):
    """Separable ``w``-wide ``combine`` (max or min) filter: along each axis, each window is
    ``combine`` of two overlapping power-of-two windows."""
    for axis in (1, 2):
        windows = _doubling_windows(x, w, axis, combine, pad_value=pad_value)
        p = max(windows)
        head = _along(windows[p], axis, 0, w - p)
        x = combine(head, _along(windows[p], axis, w - p, 0))
    return x


@keras.saving.register_keras_serializable(package=_PKG)
class NoiseLevelMap(keras.layers.Layer):
    """(N, H, W, C) -> (N, H / f, W / f, 1): a local estimate of the noise's standard deviation.

    Why: DnCNN's biases act as thresholds set by the noise level; a bias-free network
    has none and must judge from the local image alone whether fine detail is noise, which a
    small network does badly near σ = 0 (it smooths clean texture). A bias proportional to
    this map (:class:`NoiseBias`) brings the thresholds back and keeps the network
    positively homogeneous: the map of ``a * y`` is ``a`` times the map of ``y``.

    Estimate (after Immerkær, 1996): ``|y * L|`` with the 3×3 kernel
    ``[[1, -2, 1], [-2, 4, -2], [1, -2, 1]]``, which annihilates planes and ramps, scaled so
    white noise of σ has mean σ; averaged over channels and ``factor`` × ``factor`` cells
    (the map is that much coarser, so it costs little), then over a ``BOX``-cell box (local
    noise and texture); the minimum over ``window`` cells around (the flattest part: noise
    alone, so on white noise the map is about half of σ); a ``window``-cell box mean of that,
    so the map is smooth. ``|.|``, means and min filters are positively homogeneous, and the
    map is local: tiles whose cores start at multiples of ``factor`` agree wherever the
    receptive field, enlarged by :attr:`reach`, is inside their margin.
    """

    BOX = 3  # cells: the local average of |y * L| before the min filter

    def __init__(self, window: int = 9, factor: int = 1, **kwargs):
        super().__init__(**kwargs)
        if window < 1 or window % 2 == 0:
            raise ValueError(f"NoiseLevelMap expected an odd window >= 1. Received: {window}")
        if factor < 1:
            raise ValueError(f"NoiseLevelMap expected factor >= 1. Received: {factor}")
        self.window = int(window)
        self.factor = int(factor)

    @property
    def reach(self) -> int:
        """How far (input px) the map at a pixel looks: kernel, cell, box, min filter, smoothing."""
        return 1 + self.factor * (1 + self.BOX // 2 + 2 * (self.window // 2))

    def call(self, x):
        # y * L from shifted views of the edge-replicated image, so borders are not edges
        xp = ops.pad(x, [(0, 0), (1, 1), (1, 1), (0, 0)], mode="symmetric")
        h, w = ops.shape(x)[1], ops.shape(x)[2]

        def at(dy, dx):
            return xp[:, 1 + dy : 1 + dy + h, 1 + dx : 1 + dx + w, :]

        corners = at(-1, -1) + at(-1, 1) + at(1, -1) + at(1, 1)
        edges = at(-1, 0) + at(1, 0) + at(0, -1) + at(0, 1)
        d = corners - 2.0 * edges + 4.0 * at(0, 0)
        # E|d| = 6 σ sqrt(2 / π) for white noise of σ (the kernel's L2 norm is 6)
        m = ops.mean(ops.abs(d), axis=-1, keepdims=True) * (np.sqrt(np.pi / 2) / 6)
        if self.factor > 1:
            m = ops.average_pool(m, self.factor, self.factor, padding="valid")
        return _box(_min_filter(_box(m, self.BOX), self.window), self.window)

    def compute_output_shape(self, input_shape):
        n, h, w = input_shape[:3]
        f = self.factor
        return (n, None if h is None else h // f, None if w is None else w // f, 1)

    def get_config(self):
        return {**super().get_config(), "window": self.window, "factor": self.factor}


@keras.saving.register_keras_serializable(package=_PKG)
class NoiseBias(keras.layers.Layer):
    """``[h, s] -> h + beta * s``: per-channel biases proportional to a noise level map ``s``.

    Why: see :class:`NoiseLevelMap`. ``s`` scales with the input, so the sum is as
    homogeneous as ``h``; ``beta`` starts at zero, so adding these to a trained network
    leaves its output unchanged until training moves them.
    """

    def build(self, input_shape):
        self.beta = self.add_weight(
            shape=(input_shape[0][-1],), initializer="zeros", name="beta"
        )

    def call(self, inputs):
        h, s = inputs
        return h + s * self.beta

    def compute_output_shape(self, input_shape):
        return input_shape[0]


@keras.saving.register_keras_serializable(package=_PKG)
class ChromaPedestal(keras.layers.Layer):
    """(N, H, W, 3) opponent planes -> (0, p, p), ``p = gain * local mean intensity``.

    With ``chroma_window``: (0, p1, p2), each ``pi`` at least a bound on plane i's ``|C|``.

    Why: the colour-difference planes are signed and centred on zero, unlike any
    image a one-channel denoiser was trained on; it then mistakes their small
    signal for noise or noise for signal. Lifted onto a pedestal the size of the
    local brightness, they look like a low-contrast image, which the shared trunk
    denoises well; the pedestal is subtracted again afterwards (for a residual
    trunk it cancels by itself). ``p`` is a ``window``-wide box mean of the
    luminance: linear in the input (so still homogeneous, no constant is added),
    smooth enough to carry almost no noise, and local, so tiles agree wherever the
    receptive field, which includes ``window // 2``, is inside their margin.

    With ``chroma_window`` (odd, 0 = off) each colour difference gets its own
    pedestal, the larger of that brightness term and ``bound(|C|)``, a
    ``chroma_window``-wide box mean of a max filter of the (5-px box smoothed)
    ``|C|`` of the same width. Why: in saturated colours ``|C|`` exceeds the local
    brightness, the lifted plane goes negative, and the trunk, which never saw
    negative images, damages it. The bound is at least the smoothed ``|C|`` at every
    pixel (every box it averages over holds that pixel), and box, max filter, ``|.|``
    and ``max`` are all positively homogeneous, so the model stays bias-free.
    """

    def __init__(self, window: int = 129, gain: float = 1.0, chroma_window: int = 0, **kwargs):
        super().__init__(**kwargs)
        if window < 1 or window % 2 == 0:
            raise ValueError(f"ChromaPedestal expected an odd window >= 1. Received: {window}")
        if not gain > 0:
            raise ValueError(f"ChromaPedestal expected gain > 0. Received: gain={gain}")
        if chroma_window < 0 or (chroma_window and chroma_window % 2 == 0):
            raise ValueError(
                f"ChromaPedestal expected an odd chroma_window, or 0 for none. "
                f"Received: {chroma_window}"
            )
        self.window = int(window)
        self.gain = float(gain)
        self.chroma_window = int(chroma_window)

    SMOOTH = 5  # px: the box that calms the noise in |C| before the max filter

    @property
    def chroma_reach(self) -> int:
        """How far (px) the colour bound looks from a pixel: smoothing, max filter, box."""
        if not self.chroma_window:
            return 0
        return self.SMOOTH // 2 + 2 * (self.chroma_window // 2)

    def call(self, x):
        luma = x[..., :1]
        mean = _box(luma, self.window)
        p = mean * (self.gain * 3**-0.5)  # luminance plane / sqrt(3) = mean of R, G, B
        if self.chroma_window:
            k = self.chroma_window
            c = _max_filter_nonneg(ops.abs(_box(x[..., 1:], self.SMOOTH)), k)
            p = ops.maximum(p, _box(c, k))
            return ops.concatenate([ops.zeros_like(luma), p], axis=-1)
        return ops.concatenate([ops.zeros_like(p), p, p], axis=-1)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {
            **super().get_config(),
            "window": self.window,
            "gain": self.gain,
            "chroma_window": self.chroma_window,
        }


@keras.saving.register_keras_serializable(package=_PKG)
class ChannelsToBatch(keras.layers.Layer):
    """(N, H, W, C) -> (N*C, H, W, 1): each channel an image of its own (a permutation)."""

    def call(self, x):
        shape = ops.shape(x)
        n, h, w, c = shape[0], shape[1], shape[2], x.shape[-1]
        return ops.reshape(ops.transpose(x, (0, 3, 1, 2)), (n * c, h, w, 1))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        return (None if n is None else n * c, h, w, 1)


@keras.saving.register_keras_serializable(package=_PKG)
class KernelRegularizer(keras.regularizers.Regularizer):
    """L1 + L2 + soft orthogonality on a convolution kernel W reshaped to (k*k*in, out).

    Orthogonality: ``||W^T W - I||_F^2``, or ``||W W^T - I||_F^2`` when W has fewer rows
    than columns (the one that can reach 0).
    """

    def __init__(self, l1: float = 0.0, l2: float = 0.0, orthogonal: float = 0.0):
        for name, v in (("l1", l1), ("l2", l2), ("orthogonal", orthogonal)):
            if v < 0:
                raise ValueError(f"KernelRegularizer expected {name} >= 0. Received: {name}={v}")
        self.l1, self.l2, self.orthogonal = float(l1), float(l2), float(orthogonal)

    def __call__(self, w):
        loss = ops.convert_to_tensor(0.0, dtype=w.dtype)
        if self.l1:
            loss = loss + self.l1 * ops.sum(ops.abs(w))
        if self.l2:
            loss = loss + self.l2 * ops.sum(ops.square(w))
        if self.orthogonal:
            m = ops.reshape(w, (-1, w.shape[-1]))
            rows, cols = int(m.shape[0]), int(m.shape[1])
            # the smaller Gram: a kernel with fewer rows (3x3x1 inputs -> 64 filters) cannot
            # have orthonormal columns, and W^T W - I would keep a floor of cols - rows
            if rows < cols:
                m = ops.transpose(m)
            gram = ops.matmul(ops.transpose(m), m)
            eye = ops.eye(min(rows, cols), dtype=w.dtype)
            loss = loss + self.orthogonal * ops.sum(ops.square(gram - eye))
        return loss

    def get_config(self):
        return {"l1": self.l1, "l2": self.l2, "orthogonal": self.orthogonal}
