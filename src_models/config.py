"""One validated schema for models, corruptions and training.

Every recipe, model card and the training widget go through these classes, so
a bad value is caught once, with a message naming the field and what is allowed.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Union

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

__all__ = [
    "ArchitectureConfig",
    "ConfigError",
    "CorruptionConfig",
    "DataConfig",
    "DnCNNConfig",
    "FluorescenceConfig",
    "MultiscaleConfig",
    "RecipeConfig",
    "ResNetConfig",
    "TrainingConfig",
    "UNetConfig",
    "load_recipe",
]


class ConfigError(ValueError):
    """A configuration value is invalid; the message names the field and the allowed values."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)


Activation = Literal["relu", "leaky_relu"]


class _ArchBase(_Strict):
    channels: int = Field(1, ge=1, le=4, description="image channels in and out (1 gray, 3 RGB)")
    residual: bool = Field(True, description="predict the noise and subtract it (DnCNN style)")
    activation: Activation = "relu"
    kernel_size: int = Field(3, ge=1, le=7)
    l2: float = Field(0.0, ge=0.0, description="L2 weight on kernels")
    l1: float = Field(0.0, ge=0.0, description="L1 weight on kernels")
    orthogonal: float = Field(0.0, ge=0.0, description="soft-orthogonality weight on kernels")

    @field_validator("kernel_size")
    @classmethod
    def _odd_kernel(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"kernel_size must be odd (got {v})")
        return v


class DnCNNConfig(_ArchBase):
    """Plain BF-DnCNN: conv-relu, (depth-2) x [conv, scale-norm, relu], conv."""

    kind: Literal["dncnn"] = "dncnn"
    depth: int = Field(17, ge=2, le=64)
    width: int = Field(64, ge=4, le=512)
    norm: bool = True
    unshuffle: int = Field(
        1, description="pixel-unshuffle factor (1, 2 or 4): FFDNet-style speed-up"
    )

    @field_validator("unshuffle")
    @classmethod
    def _unshuffle(cls, v: int) -> int:
        if v not in (1, 2, 4):
            raise ValueError(f"unshuffle must be 1, 2 or 4 (got {v})")
        return v


class ResNetConfig(_ArchBase):
    """Residual 1x1-3x3-1x1 blocks like the original bfcnn models, bias-free."""

    kind: Literal["resnet"] = "resnet"
    blocks: int = Field(6, ge=1, le=64)
    width: int = Field(32, ge=4, le=512)
    expand: int = Field(64, ge=4, le=1024, description="channels inside each block")
    norm: bool = True
    gate: bool = Field(False, description="spatial gates from scale-invariant statistics")
    squeeze_excite: bool = Field(False, description="channel gates from scale-invariant statistics")


class UNetConfig(_ArchBase):
    """Bias-free U-Net: a large receptive field per FLOP, for strong noise."""

    kind: Literal["unet"] = "unet"
    scales: int = Field(3, ge=2, le=4)
    width: int = Field(
        32, ge=4, le=256, description="channels at full resolution; doubled per scale"
    )
    max_width: int = Field(256, ge=4, le=1024)
    convs: int = Field(2, ge=1, le=6, description="3x3 convolutions per level and side")
    norm: bool = False
    unshuffle: int = Field(1, description="pixel-unshuffle factor before the first level (1 or 2)")
    channel_mode: Literal["joint", "guided", "opponent"] = Field(
        "joint",
        description=(
            "joint: one network sees all channels at once; guided: one shared one-channel "
            "network per channel, given the mean of all channels as a second input; "
            "opponent (RGB only): one shared one-channel network on the luminance and the two "
            "colour-difference planes of an orthonormal opponent basis, the latter lifted onto "
            "a pedestal (guided and opponent can start from a gray model's weights)"
        ),
    )
    pedestal_window: int = Field(
        129, ge=1, le=1025, description="opponent: box width (px, odd) of the pedestal's local mean"
    )
    pedestal_gain: float = Field(
        1.0, gt=0, le=100, description="opponent: pedestal height in units of that local mean"
    )
    pedestal_chroma_window: int = Field(
        0,
        ge=0,
        le=1025,
        description=(
            "opponent: if > 0 (odd), each colour difference's pedestal is at least a "
            "box mean of a max filter of its magnitude over this many px, so saturated "
            "colours are lifted above zero too (0: brightness alone)"
        ),
    )
    noise_bias_window: int = Field(
        0,
        ge=0,
        le=257,
        description=(
            "if > 0 (odd): every convolution gets a per-channel bias proportional to a local "
            "noise estimate, the flattest part of this many px (the thresholds a bias-free "
            "network lacks; still homogeneous); 0: none"
        ),
    )

    @field_validator("unshuffle")
    @classmethod
    def _unshuffle(cls, v: int) -> int:
        if v not in (1, 2):
            raise ValueError(f"unshuffle must be 1 or 2 (got {v})")
        return v

    @field_validator("pedestal_window")
    @classmethod
    def _odd_window(cls, v: int) -> int:
        if v % 2 == 0:
            raise ValueError(f"pedestal_window must be odd, so the mean is centred (got {v})")
        return v

    @field_validator("pedestal_chroma_window", "noise_bias_window")
    @classmethod
    def _odd_or_no_window(cls, v: int, info: ValidationInfo) -> int:
        if v and v % 2 == 0:
            raise ValueError(
                f"{info.field_name} must be odd, so the filters are centred, or 0 (got {v})"
            )
        return v

    @model_validator(mode="after")
    def _channel_mode_needs_channels(self):
        if self.channel_mode == "guided" and self.channels < 2:
            raise ValueError(
                f"channel_mode='guided' needs channels >= 2 (got channels={self.channels}); "
                "use channel_mode='joint' for one-channel models"
            )
        if self.channel_mode == "opponent" and self.channels != 3:
            raise ValueError(
                f"channel_mode='opponent' is for RGB: it needs channels = 3 "
                f"(got channels={self.channels})"
            )
        return self


class MultiscaleConfig(_ArchBase):
    """Pyramid of the input, one shared-weight denoiser per level, linear recombination."""

    kind: Literal["multiscale"] = "multiscale"
    levels: int = Field(3, ge=2, le=5)
    pyramid: Literal["laplacian", "gaussian"] = "laplacian"
    depth: int = Field(8, ge=2, le=32, description="depth of the shared per-level DnCNN")
    width: int = Field(48, ge=4, le=256)
    norm: bool = True


ArchitectureConfig = Annotated[
    Union[DnCNNConfig, ResNetConfig, UNetConfig, MultiscaleConfig], Field(discriminator="kind")
]


class CorruptionConfig(_Strict):
    """The training noise, drawn per sample. Sigmas and read noise are on the 8-bit scale."""

    sigma_range: tuple[float, float] = (0.0, 75.0)
    per_channel_prob: float = Field(
        0.0, ge=0.0, le=1.0, description="independent sigma per channel"
    )
    clean_prob: float = Field(0.05, ge=0.0, le=1.0, description="share of near-clean samples")
    clean_sigma_max: float = Field(2.0, ge=0.0, description="sigma of 'near-clean' samples")
    multiplicative_prob: float = Field(0.0, ge=0.0, le=1.0)
    multiplicative_range: tuple[float, float] = (0.0, 0.3)
    subsample_prob: float = Field(0.0, ge=0.0, le=1.0)
    subsample_factors: tuple[int, ...] = (2, 4)
    blur_prob: float = Field(0.0, ge=0.0, le=1.0)
    blur_sigma_range: tuple[float, float] = Field(
        (0.3, 1.0),
        description="sigma of the weights of a 3-tap Gaussian kernel (pixels); the kernel ends "
        "at 1 px, so its actual spread is 0.46 px at 0.5 and saturates near 0.8 px above 1",
    )
    poisson_gaussian_prob: float = Field(0.0, ge=0.0, le=1.0)
    photons_range: tuple[float, float] = Field(
        (2.0, 200.0), description="photons at full scale (signal 1.0); lower is noisier"
    )
    read_noise_range: tuple[float, float] = Field(
        (0.0, 10.0), description="read-noise sigma, 8-bit"
    )
    correlated_prob: float = Field(
        0.0,
        ge=0.0,
        le=1.0,
        description=(
            "spatially correlated noise: the drawn noise low-passed by a Gaussian (camera "
            "resampling, scan-line amplifiers), at the same per-pixel variance"
        ),
    )
    correlated_sigma_range: tuple[float, float] = Field(
        (0.3, 1.2), description="Gaussian width of the noise correlation, pixels, per axis"
    )
    clip: bool = False
    quantize: bool = False

    @field_validator(
        "sigma_range",
        "multiplicative_range",
        "blur_sigma_range",
        "photons_range",
        "read_noise_range",
        "correlated_sigma_range",
    )
    @classmethod
    def _ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if lo < 0 or hi < lo:
            raise ValueError(f"must be (low, high) with 0 <= low <= high (got {v})")
        return v

    @field_validator("subsample_factors")
    @classmethod
    def _factors(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(f not in (2, 3, 4) for f in v):
            raise ValueError(f"subsample_factors must be a non-empty subset of (2, 3, 4) (got {v})")
        return v

    @model_validator(mode="after")
    def _photons_drawn_positive(self) -> CorruptionConfig:
        # else the run fails at whichever step first draws the Poisson branch
        if self.poisson_gaussian_prob > 0 and self.photons_range[0] <= 0:
            raise ValueError(
                f"photons_range must start above 0 when poisson_gaussian_prob > 0 "
                f"(got {self.photons_range})"
            )
        return self


class FluorescenceConfig(_Strict):
    """Photos made to look like widefield fluorescence before the noise is added.

    Why: a fluorescence image is a dark field of labelled structures seen through the
    microscope's point-spread function, so it has no detail finer than the PSF; a model
    that learned only photos keeps pixel-sharp "detail" that the optics cannot deliver.
    The transformed image is the target as well as the signal the noise is added to.
    """

    prob: float = Field(
        0.0, ge=0.0, le=1.0, description="share of clean patches transformed (0: photos as is)"
    )
    gamma_range: tuple[float, float] = Field(
        (1.0, 3.0),
        description="intensity remap x**gamma, gamma uniform in the range: darker background, "
        "sparser bright structures",
    )
    psf_sigma_range: tuple[float, float] = Field(
        (0.5, 2.0),
        description="Gaussian PSF width, pixels, uniform in the range (Nyquist sampling: ~0.85)",
    )

    @field_validator("gamma_range", "psf_sigma_range")
    @classmethod
    def _positive_ordered(cls, v: tuple[float, float]) -> tuple[float, float]:
        lo, hi = v
        if lo <= 0 or hi < lo:
            raise ValueError(f"must be (low, high) with 0 < low <= high (got {v})")
        return v


class DataConfig(_Strict):
    """Where clean training images come from. Relative paths are relative to the recipe file."""

    train: list[str] = Field(default_factory=list, description="folders or files of clean images")
    val: list[str] = Field(default_factory=list, description="validation images; empty: hold out")
    val_fraction: float = Field(0.05, ge=0.0, lt=1.0)
    max_val_images: int = Field(8, ge=1)
    split_seed: int = Field(
        0,
        ge=0,
        description="seed of the held-out images, not the training seed: every stage of a "
        "model keeps the same split, so none validates on images an earlier stage trained on",
    )
    patch_size: int = Field(64, ge=8, le=1024)
    color: bool = False
    augment: bool = True
    fluorescence: FluorescenceConfig = Field(default_factory=FluorescenceConfig)


class TrainingConfig(_Strict):
    """Optimisation settings: Adam, warm-up then cosine decay, gradient clipping."""

    steps: int = Field(10000, ge=1)
    batch_size: int = Field(32, ge=1, le=4096)
    learning_rate: float = Field(1e-3, gt=0.0, le=1.0)
    min_learning_rate: float = Field(1e-5, ge=0.0)
    warmup_steps: int = Field(200, ge=0)
    clip_norm: float = Field(1.0, gt=0.0)
    loss: Literal["mse", "mae", "hinge_mae"] = "mse"
    loss_weighting: Literal["none", "inverse_noise"] = Field(
        "none",
        description="inverse_noise: weight each sample by 1/(input MSE + floor^2), so low-noise "
        "samples count as much as high-noise ones (a PSNR-balanced objective)",
    )
    weighting_floor: float = Field(5.0, gt=0.0, description="noise floor of the weighting, 8-bit")
    hinge_margin: float = Field(0.0, ge=0.0, description="|error| below this costs nothing (8-bit)")
    val_every: int = Field(500, ge=1)
    val_sigmas: tuple[float, ...] = (15.0, 25.0, 50.0)
    val_photons: tuple[float, ...] = Field(
        (),
        description="also validate on Poisson noise at these photons at full scale, on the "
        "validation images made fluorescence-like when data.fluorescence is on",
    )
    checkpoint_every: int = Field(500, ge=1)
    log_every: int = Field(50, ge=1)
    seed: int = Field(0, ge=0)

    @field_validator("val_photons")
    @classmethod
    def _photons_positive(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(p <= 0 for p in v):
            raise ValueError(f"photon counts must be > 0 (got {v})")
        return v

    @field_validator("val_sigmas")
    @classmethod
    def _sigmas_non_negative(cls, v: tuple[float, ...]) -> tuple[float, ...]:
        if any(not s >= 0 for s in v):
            raise ValueError(f"validation sigmas must be >= 0 (got {v})")
        return v

    @model_validator(mode="after")
    def _something_to_validate(self) -> TrainingConfig:
        # with no score, no checkpoint ever beats the start and the untrained model is kept
        if not self.val_sigmas and not self.val_photons:
            raise ValueError("give at least one of val_sigmas or val_photons: the best model "
                             "is chosen by its validation score")
        return self

    @model_validator(mode="after")
    def _lr_order(self) -> TrainingConfig:
        if self.min_learning_rate > self.learning_rate:
            raise ValueError(
                f"min_learning_rate ({self.min_learning_rate}) must not exceed "
                f"learning_rate ({self.learning_rate})"
            )
        return self


class RecipeConfig(_Strict):
    """Everything needed to rebuild a model: architecture, noise, data and optimisation."""

    name: str = Field(..., min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_.\-]+$")
    description: str = ""
    architecture: ArchitectureConfig
    corruption: CorruptionConfig = Field(default_factory=CorruptionConfig)
    data: DataConfig = Field(default_factory=DataConfig)
    training: TrainingConfig = Field(default_factory=TrainingConfig)
    init_from: str | None = Field(None, description="model name or path to start from")

    @model_validator(mode="after")
    def _channels_match(self) -> RecipeConfig:
        want = 3 if self.data.color else 1
        if self.architecture.channels != want:
            raise ValueError(
                f"architecture.channels is {self.architecture.channels} but data.color="
                f"{self.data.color} gives {want}-channel images"
            )
        return self


def format_validation_error(err: ValidationError, source: str = "config") -> str:
    """Turn pydantic's error list into one readable message naming each bad field."""
    lines = []
    for e in err.errors():
        loc = ".".join(str(p) for p in e["loc"])
        got = e.get("input")
        got_txt = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {loc}: {e['msg']}{got_txt}")
    return f"invalid {source}:\n" + "\n".join(lines)


def parse_recipe(data: dict, source: str = "recipe") -> RecipeConfig:
    """Validate a recipe dictionary; raise :class:`ConfigError` naming every bad field."""
    try:
        return RecipeConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, source)) from None


def load_recipe(path: str | Path) -> RecipeConfig:
    """Read a YAML recipe and resolve its data paths (and an ``init_from`` file) relative to it.

    Parameters
    ----------
    path : str or Path
        The recipe file.

    Returns
    -------
    RecipeConfig
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"recipe not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML: {err}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"recipe {path} must be a mapping, got {type(raw).__name__}")
    recipe = parse_recipe(raw, source=str(path))
    base = path.parent
    recipe.data.train = [_resolve(base, p) for p in recipe.data.train]
    recipe.data.val = [_resolve(base, p) for p in recipe.data.val]
    if recipe.init_from and recipe.init_from.endswith(".keras"):  # a file, not a bundled name
        recipe.init_from = _resolve(base, recipe.init_from)
    return recipe


def _resolve(base: Path, p: str) -> str:
    q = Path(p).expanduser()
    return str(q if q.is_absolute() else (base / q).resolve())


class ModelCard(_Strict):
    """What a model file says about itself: how it was built, what it needs, how it scores.

    Stored inside the model's ``.keras`` file, so one file describes itself.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, protected_namespaces=())

    name: str
    description: str = ""
    channels: int = Field(1, ge=1, le=4)
    kind: str = ""
    parameters: int = 0
    receptive_field: int = Field(0, ge=0, description="half-width in pixels; tiles overlap by it")
    size_multiple: int = Field(1, ge=1, description="height and width must be multiples of it")
    sigma_range: tuple[float, float] = (0.0, 75.0)
    recipe: RecipeConfig | None = None
    base_model: str | None = None
    steps_done: int = 0
    training_time_s: float = 0.0
    hardware: str = ""
    val_psnr: dict[str, float] = Field(
        default_factory=dict, description="sigma (or '<photons>ph') -> PSNR (dB)"
    )
    training_data: list[str] = Field(default_factory=list)
    created: str = ""
    notes: dict[str, str] = Field(default_factory=dict)

    def validation_text(self) -> str:
        """The validation PSNRs in words: Gaussian sigmas, then photon levels, then named scores.

        Named scores are a fine-tuning run's own (``pair``, ``r2r``, ``n2n``).
        """

        def number(text: str) -> float | None:
            try:
                return float(text)
            except ValueError:
                return None

        sigmas, photons, named = [], [], []
        for k, v in self.val_psnr.items():
            if (sigma := number(k)) is not None:
                sigmas.append((sigma, v))
            elif k.endswith("ph") and (level := number(k[:-2])) is not None:
                photons.append((level, v))
            else:
                named.append((k, v))
        groups = [", ".join(f"σ={k:g}: {v:.2f} dB" for k, v in sorted(sigmas))]
        if photons:
            shot = ", ".join(f"{k:g} photons at full scale: {v:.2f} dB" for k, v in sorted(photons))
            fluo = self.recipe is not None and self.recipe.data.fluorescence.prob > 0
            groups.append(("fluorescence-like, " if fluo else "") + f"Poisson noise at {shot}")
        groups.append(", ".join(f"{k}: {v:.2f} dB" for k, v in sorted(named)))
        return "; ".join(g for g in groups if g)
