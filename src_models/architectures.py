"""Builders for the bias-free architectures in the config schema.

Each builder returns a functional ``keras.Model`` that takes (N, H, W, C) float
images and returns the denoised image in the same units. Nothing adds a
constant, so every model is positively homogeneous of degree 1.
"""

from __future__ import annotations

import keras
import numpy as np

from .config import DnCNNConfig, MultiscaleConfig, ResNetConfig, UNetConfig
from .layers import (
    BatchToChannels,
    ChannelsToBatch,
    ChannelsToGuidedBatch,
    ChromaPedestal,
    DepthToSpace,
    KernelRegularizer,
    LocalSqueezeExcite,
    NoiseBias,
    NoiseLevelMap,
    OpponentColor,
    ScaleNorm,
    SpaceToDepth,
    SpatialGate,
)

__all__ = [
    "build_model",
    "init_from_without_noise_bias",
    "init_guided_from_gray",
    "parameter_count",
    "receptive_field",
    "size_multiple",
]


def size_multiple(config) -> int:
    """Height and width must be multiples of this (strides, pixel unshuffle, pyramids)."""
    if isinstance(config, UNetConfig):
        return config.unshuffle * 2 ** (config.scales - 1)
    if isinstance(config, MultiscaleConfig):
        return 2 ** (config.levels - 1)
    if isinstance(config, DnCNNConfig):
        return config.unshuffle
    return 1


def build_model(config, name: str | None = None) -> keras.Model:
    """Build the Keras model described by an architecture config.

    Parameters
    ----------
    config : DnCNNConfig | ResNetConfig | UNetConfig | MultiscaleConfig
        A validated architecture config.
    name : str, optional
        Model name; defaults to the architecture kind.

    Returns
    -------
    keras.Model
        Input and output shape (None, None, None, channels).
    """
    builders = {
        "dncnn": _dncnn,
        "resnet": _resnet,
        "unet": _unet,
        "multiscale": _multiscale,
    }
    inputs = keras.Input(shape=(None, None, config.channels), name="noisy")
    estimate = builders[config.kind](inputs, config)
    if config.residual:
        outputs = keras.layers.Subtract(name="denoised")([inputs, estimate])
    else:
        outputs = keras.layers.Identity(name="denoised")(estimate)
    return keras.Model(inputs, outputs, name=name or config.kind)


class _Ops:
    """Small factory that applies one architecture's shared settings to every layer."""

    def __init__(self, config, prefix: str = ""):
        self.c = config
        self.prefix = prefix
        self.n = 0
        self.reg = (
            KernelRegularizer(config.l1, config.l2, config.orthogonal)
            if (config.l1 or config.l2 or config.orthogonal)
            else None
        )

    def _name(self, what: str) -> str:
        self.n += 1
        return f"{self.prefix}{what}_{self.n}"

    def conv(self, x, filters: int, kernel: int | None = None, strides: int = 1, zero=False):
        k = self.c.kernel_size if kernel is None else kernel
        return keras.layers.Conv2D(
            filters,
            k,
            strides=strides,
            padding="same",
            use_bias=False,
            # a zero last layer makes a residual net start as the identity (D(y) = y)
            kernel_initializer="zeros" if zero else "he_normal",
            kernel_regularizer=self.reg,
            name=self._name("conv"),
        )(x)

    def up(self, x, filters: int):
        return keras.layers.Conv2DTranspose(
            filters,
            2,
            strides=2,
            padding="same",
            use_bias=False,
            kernel_initializer="he_normal",
            kernel_regularizer=self.reg,
            name=self._name("up"),
        )(x)

    def act(self, x):
        if self.c.activation == "leaky_relu":
            return keras.layers.LeakyReLU(negative_slope=0.1, name=self._name("lrelu"))(x)
        return keras.layers.ReLU(name=self._name("relu"))(x)

    def norm(self, x):
        return ScaleNorm(name=self._name("scalenorm"))(x) if self.c.norm else x

    def conv_norm_act(self, x, filters: int, kernel: int | None = None, noise=None):
        return self.act(self.noise_bias(self.norm(self.conv(x, filters, kernel)), noise))

    def noise_bias(self, x, noise):
        """``x`` plus biases proportional to the noise map ``noise`` (none if it is None).

        Named after the layer before it, without taking a number, so the other layers keep
        the names (and weights) of the same network without noise biases.
        """
        if noise is None:
            return x
        return NoiseBias(name=f"{self.prefix}noisebias_{self.n}")([x, noise])


def _dncnn(x, c: DnCNNConfig, prefix: str = ""):
    o = _Ops(c, prefix)
    b = c.unshuffle
    h = SpaceToDepth(b, name=o._name("unshuffle"))(x) if b > 1 else x
    h = o.act(o.conv(h, c.width))
    for _ in range(c.depth - 2):
        h = o.conv_norm_act(h, c.width)
    h = o.conv(h, c.channels * b * b, zero=c.residual)
    return DepthToSpace(b, name=o._name("shuffle"))(h) if b > 1 else h


def _resnet(x, c: ResNetConfig):
    o = _Ops(c)
    h = o.act(o.conv(x, c.width))
    for _ in range(c.blocks):
        r = o.conv_norm_act(h, c.expand, kernel=1)
        r = o.conv_norm_act(r, c.expand)
        if c.gate:
            r = SpatialGate(name=o._name("gate"))(r)
        if c.squeeze_excite:
            r = LocalSqueezeExcite(name=o._name("se"))(r)
        r = o.conv(r, c.width, kernel=1)
        h = keras.layers.Add(name=o._name("add"))([h, r])
    h = o.act(h)
    return o.conv(h, c.channels, zero=c.residual)


def _unet(x, c: UNetConfig):
    if c.channel_mode == "opponent":
        return _opponent_unet(x, c)
    if c.channel_mode == "guided":
        # one shared one-channel trunk, the channel and the mean of all channels as its input;
        # its layers are named exactly as a gray U-Net's, so gray weights can start it
        trunk = c.model_copy(update={"channels": 1, "channel_mode": "joint"})
        h = ChannelsToGuidedBatch(name="channels_to_batch")(x)
        return BatchToChannels(c.channels, name="batch_to_channels")(_unet(h, trunk))
    o = _Ops(c)
    u = c.unshuffle
    h = SpaceToDepth(u, name=o._name("unshuffle"))(x) if u > 1 else x
    widths = [min(c.width * 2**s, c.max_width) for s in range(c.scales)]
    noise = [None] * c.scales  # the noise map at each level's resolution
    if c.noise_bias_window:
        # made at the second level's resolution (cheap), then moved to the others' by
        # nearest upsampling and average pooling, both linear
        f = 2 * u
        noise[1] = NoiseLevelMap((c.noise_bias_window // f) | 1, f, name="noise_level")(x)
        noise[0] = keras.layers.UpSampling2D(2, name="noise_level_0")(noise[1])
        for s in range(2, c.scales):
            noise[s] = keras.layers.AveragePooling2D(2, name=f"noise_level_{s}")(noise[s - 1])
    skips = []
    for s, w in enumerate(widths):
        if s > 0:
            h = o.act(o.noise_bias(o.conv(h, w, kernel=2, strides=2), noise[s]))
        for _ in range(c.convs):
            h = o.conv_norm_act(h, w, noise=noise[s])
        skips.append(h)
    for s in range(c.scales - 2, -1, -1):
        h = o.up(h, widths[s])
        h = keras.layers.Add(name=o._name("skip"))([h, skips[s]])
        for _ in range(c.convs):
            h = o.conv_norm_act(h, widths[s], noise=noise[s])
    h = o.conv(h, c.channels * u * u, zero=c.residual)
    return DepthToSpace(u, name=o._name("shuffle"))(h) if u > 1 else h


def _opponent_unet(x, c: UNetConfig):
    """RGB -> opponent planes (chroma on a pedestal) -> one shared gray trunk -> RGB.

    The trunk's layers are named exactly as a gray U-Net's, so gray weights start it;
    see :class:`~src_models.layers.ChromaPedestal` for why the pedestal.
    """
    trunk = c.model_copy(update={"channels": 1, "channel_mode": "joint"})
    opp = OpponentColor(name="to_opponent")(x)
    pedestal = ChromaPedestal(
        c.pedestal_window, c.pedestal_gain, c.pedestal_chroma_window, name="chroma_pedestal"
    )(opp)
    lifted = keras.layers.Add(name="lift_chroma")([opp, pedestal])
    h = ChannelsToBatch(name="channels_to_batch")(lifted)
    h = BatchToChannels(c.channels, name="batch_to_channels")(_unet(h, trunk))
    # a residual trunk returns a noise estimate, and the caller's ``x - estimate`` removes the
    # pedestal without help (it is in the trunk's input and output alike); a plain one needs it
    if not c.residual:
        h = keras.layers.Subtract(name="drop_pedestal")([h, pedestal])
    return OpponentColor(inverse=True, name="from_opponent")(h)


def _multiscale(x, c: MultiscaleConfig):
    inner_cfg = DnCNNConfig(
        channels=c.channels,
        depth=c.depth,
        width=c.width,
        norm=c.norm,
        activation=c.activation,
        kernel_size=c.kernel_size,
        l1=c.l1,
        l2=c.l2,
        orthogonal=c.orthogonal,
        residual=True,
    )
    shared = build_model(inner_cfg, name="level_denoiser")

    def down(t, i):
        return keras.layers.AveragePooling2D(2, name=f"down_{i}")(t)

    def up(t, i):
        return keras.layers.UpSampling2D(2, interpolation="bilinear", name=f"up_{i}")(t)

    gauss = [x]
    for i in range(1, c.levels):
        gauss.append(down(gauss[-1], i))
    den = [shared(g) for g in gauss]
    if c.pyramid == "laplacian":
        # coarse-to-fine: the coarsest denoised level, then each finer level's band-pass
        out = den[-1]
        for i in range(c.levels - 2, -1, -1):
            band = keras.layers.Subtract(name=f"band_{i}")(
                [den[i], up(down(den[i], f"b{i}"), f"b{i}")]
            )
            out = keras.layers.Add(name=f"recombine_{i}")([up(out, f"r{i}"), band])
        estimate = out
    else:
        ups = []
        for i, d in enumerate(den):
            for j in range(i):
                d = up(d, f"g{i}_{j}")
            ups.append(d)
        cat = keras.layers.Concatenate(name="levels")(ups)
        estimate = keras.layers.Conv2D(
            c.channels, 1, use_bias=False, kernel_initializer="zeros", name="fuse"
        )(cat)
        estimate = keras.layers.Add(name="fuse_plus_finest")([estimate, den[0]])
    # the builder's caller subtracts a residual; return the noise estimate in that case
    if c.residual:
        return keras.layers.Subtract(name="noise_estimate")([x, estimate])
    return estimate


def init_guided_from_gray(guided: keras.Model, gray: keras.Model, unshuffle: int) -> int:
    """Start a guided colour U-Net as the gray U-Net applied to each channel; returns layers set.

    Why: the guided trunk is the gray U-Net with a second (guide) input. Copying the
    gray weights and zeroing the guide's first-layer weights makes the new model
    exactly "gray, per channel" before any training, so fine-tuning only has to learn
    what the luminance guide adds, never re-learn denoising. An opponent U-Net's trunk
    is the gray U-Net itself: its weights are copied unchanged.

    Parameters
    ----------
    guided : keras.Model
        A model built from a ``UNetConfig`` with ``channel_mode="guided"`` (or ``"opponent"``).
    gray : keras.Model
        A one-channel U-Net with the same scales, widths, convs and unshuffle.
    unshuffle : int
        Their pixel-unshuffle factor (the first convolution's input is ordered
        (row offset, column offset, channel) after it).
    """

    def expand(name, gray_weights, new_weights):
        out = []
        for w_gray, w_new in zip(gray_weights, new_weights, strict=True):
            if w_gray.shape == w_new.shape:
                out.append(w_gray)
            elif w_gray.ndim == 4 and w_new.shape[2] == 2 * w_gray.shape[2] == 2 * unshuffle**2:
                expanded = np.zeros_like(w_new)
                expanded[:, :, 0::2] = w_gray  # the channel's own slots; the guide's stay zero
                out.append(expanded)
            else:
                raise ValueError(
                    f"layer {name!r}: weights of shape {w_gray.shape} do not fit {w_new.shape}"
                )
        return out

    return _copy_weights_by_name(guided, gray, expand, "gray")


def init_from_without_noise_bias(model: keras.Model, base: keras.Model) -> int:
    """Start a model with noise biases as ``base``, the same network without; returns layers set.

    Why: the noise-bias layers are extra and start at zero, and every other layer keeps
    its name (see ``_Ops.noise_bias``), so copying the base's weights by name makes the
    new model compute exactly what the base does until training moves the biases.
    """

    def same(name, base_weights, new_weights):
        if [w.shape for w in base_weights] != [w.shape for w in new_weights]:
            raise ValueError(f"layer {name!r}: the base's weights do not fit {model.name!r}")
        return base_weights

    return _copy_weights_by_name(model, base, same, "base")


def _copy_weights_by_name(dst: keras.Model, src: keras.Model, fit, what: str) -> int:
    """Set each weighted layer of ``dst`` to ``fit(name, src_w, dst_w)``, from its namesake."""
    by_name = {layer.name: layer for layer in dst.layers}
    copied = 0
    for layer in src.layers:
        weights = layer.get_weights()
        if not weights:
            continue
        target = by_name.get(layer.name)
        if target is None or len(target.get_weights()) != len(weights):
            raise ValueError(
                f"the {what} model's layer {layer.name!r} has no match in {dst.name!r}"
            )
        target.set_weights(fit(layer.name, weights, target.get_weights()))
        copied += 1
    return copied


def parameter_count(model: keras.Model) -> int:
    """Number of trainable parameters."""
    return int(sum(np.prod(w.shape) for w in model.trainable_weights))


def receptive_field(model: keras.Model, multiple: int = 1, size: int | None = None) -> int:
    """Measure the half-width of the receptive field in pixels.

    Why measured, not computed: it then holds for any architecture, gates and
    pyramids included. On a copy of the model whose weights are all made positive
    (so no ReLU is dead and no weight happens to be zero), we change one input
    pixel and find the farthest output pixel that moves. An output depends on an
    input exactly when that input influences it, so this structural radius is
    how far tiles must overlap, whatever the trained weights. Gates act on
    features that are zero around an impulse, so their own spatial windows
    (full-resolution, in the resnet blocks) are added to the measured radius.

    Parameters
    ----------
    model : keras.Model
        The denoiser.
    multiple : int
        Size multiple the model needs; probes are placed at every phase.
    size : int, optional
        Side of the probe image; grown until the influence fits inside it.
    """
    probe = keras.models.clone_model(model)
    rng = np.random.default_rng(0)
    probe.set_weights([_positive_like(w, rng) for w in model.get_weights()])
    channels = model.input_shape[-1]
    size = size or max(64, 4 * multiple)
    while True:
        size = -(-size // multiple) * multiple
        c = size // 2
        radius = 0
        for phase in range(max(1, multiple)):
            # positive weights on a non-negative input keep every ReLU in its linear regime,
            # so the response to an impulse on a zero image is nonzero exactly on the support
            y = np.zeros((1, size, size, channels), dtype="float32")
            y[0, c + phase, c + phase, :] = 1.0
            diff = np.abs(np.asarray(probe(y, training=False))).max(axis=(0, 3))
            ys, xs = np.nonzero(diff > 0)
            radius = max(
                radius, int(np.abs(ys - c - phase).max()), int(np.abs(xs - c - phase).max())
            )
        if radius < size // 2 - multiple - 2 or size >= 2048:
            return radius + _gate_extent(model)
        size *= 2


def _positive_like(w: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Positive weights scaled by fan-in, so activations neither vanish nor overflow."""
    fan_in = int(np.prod(w.shape[:-1])) if w.ndim > 1 else 1
    return (rng.uniform(0.5, 1.5, size=w.shape) / fan_in).astype(w.dtype)


def _gate_extent(model: keras.Model) -> int:
    """Radius that gates add beyond the linear support (an upper bound, safe for tiling).

    A chroma pedestal's colour bound is zero around a gray impulse, so the probe sees
    only its brightness window; what the bound reaches beyond that is added here.
    """
    extra = 0
    for layer in model._flatten_layers(include_self=False, recursive=True):
        if isinstance(layer, SpatialGate):
            extra += layer.kernel_size // 2
        elif isinstance(layer, LocalSqueezeExcite):
            extra += layer.window // 2
        elif isinstance(layer, ChromaPedestal):
            extra += max(0, layer.chroma_reach - layer.window // 2)
        elif isinstance(layer, NoiseLevelMap):
            # zero around an impulse on a zero image (its flattest part is empty), so unseen
            extra += layer.reach
    return extra
