"""Fine-tune (or train from scratch) a denoiser on the user's own images.

Why: a bundled model trained on photographs handles text, microscopy or a new
camera worse than it could; a few hundred steps on the user's own data close most
of that gap. Three kinds of data are supported:

* ``"clean"``: clean images, corrupted on the fly with the chosen noise;
* ``"pairs"``: registered noisy / clean acquisitions (the noise is the data's own);
* ``"noisy"``: noisy images only, self-supervised with Recorrupted-to-Recorrupted
  (:mod:`src_models.r2r`, the default: full-resolution crops, with a Poisson-Gaussian
  noise model estimated from each image) or Neighbor2Neighbor (:mod:`src_models.n2n`,
  half-resolution sub-images, needs no noise model).

A deterministic band of the largest image is held out (:mod:`src_models.finetune_data`)
and scored before and during training; the best model goes atomically into the
user-model folder with a card naming the source images, corruptions, steps, time and
validation PSNR before and after. Noisy-only runs from a base model save the midpoint of
the base and the fine-tuned weights instead (:attr:`FinetuneSettings.tuned_weight`).
Runs can be stopped and resumed: checkpoints live in ``<user models>/.runs/<name>/``.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from .config import (
    ConfigError,
    CorruptionConfig,
    DataConfig,
    DnCNNConfig,
    ModelCard,
    RecipeConfig,
    TrainingConfig,
    UNetConfig,
    parse_recipe,
)
from .finetune_data import (
    Sample,
    SourceImage,
    ValidationRegion,
    check_black_level,
    choose_validation,
    paired_samples,
    samples,
    split_off_validation,
    to_source_units,
)

if TYPE_CHECKING:  # importing train loads Keras; the widget lists MODES and PRESETS without it
    from .noise_model import PoissonGaussian
    from .train import TrainProgress

__all__ = [
    "MODES",
    "NOISY_METHODS",
    "PRESETS",
    "FinetuneResult",
    "FinetuneSettings",
    "ValidationPreview",
    "build_recipe",
    "delete_run",
    "finetune",
    "rename_run",
    "run_dir",
]

MODES = {
    "clean": "clean images + synthetic noise",
    "pairs": "noisy / clean pairs",
    "noisy": "noisy images only (self-supervised)",
}

# self-supervised methods of the "noisy" mode
NOISY_METHODS = {
    "n2n": "Neighbor2Neighbor",
    "r2r": "Recorrupted-to-Recorrupted",
}

# fresh architectures, by how long the user is willing to wait
PRESETS: dict[str, Callable[[int], Any]] = {
    "tiny": lambda c: DnCNNConfig(channels=c, depth=5, width=16, norm=False),
    "small": lambda c: DnCNNConfig(channels=c, depth=10, width=32),
    "medium": lambda c: UNetConfig(channels=c, scales=3, width=32, max_width=128),
}

RUNS = ".runs"
N2N_KEY = "n2n"
R2R_KEY = "r2r"
PAIR_KEY = "pair"


@dataclass
class FinetuneSettings:
    """What to train and how; ``None`` values get defaults from the data (:func:`build_recipe`).

    Attributes
    ----------
    name : str
        The new model's name (its file stem in the user-model folder).
    mode : {"clean", "pairs", "noisy"}
    base : str or None
        Model name or ``.keras`` path to start from; None trains ``architecture`` afresh.
    architecture : {"tiny", "small", "medium"}
        Preset for a fresh model.
    corruption : CorruptionConfig
        Training noise of the ``"clean"`` mode (8-bit sigmas, relative to each plane's peak).
    patch_size, batch_size, steps : int, optional
    learning_rate : float, optional
    val_every : int, optional
        Steps between validations (default: a tenth of the run).
    val_sigmas : tuple of float, optional
        ``"clean"`` mode Gaussian validation sigmas (> 0; default: 15, 25, 50 within the
        corruption's range, none when it draws no Gaussian noise). A Poisson-Gaussian share
        also validates at the photon range's geometric middle (:func:`_validation_noise`).
    noisy_method : {"n2n", "r2r"}
        Self-supervised method of the ``"noisy"`` mode (:data:`NOISY_METHODS`): "r2r"
        (default; Recorrupted-to-Recorrupted trains on full-resolution crops, where
        Neighbor2Neighbor adapts the network on half-resolution sub-images) or "n2n".
    n2n_gamma : float
        Final Neighbor2Neighbor regulariser weight (paper: 2; 0 switches it off).
    r2r_alpha : float
        Recorrupted-to-Recorrupted strength (> 0; paper: 0.5): training runs at
        ``1 + alpha^2`` times the data's noise variance.
    black_level : {"camera", "auto", "none"} or float
        Subtracted from every training plane before scaling, as the Denoise widget's
        black level (:func:`~src_models.finetune_data.samples`): "camera" (default)
        estimates it for camera data (12/16-bit, not RGB) only. The card records it, and
        the Denoise widget, the command line and the function denoise with it unless told
        otherwise (:func:`~src_models.registry.finetuned_black_level`).
    tuned_weight : float, optional
        Share of the fine-tuned weights in the saved model, the rest the base model's
        (weight-space ensembling, WiSE-FT: Wortsman et al., CVPR 2022); in (0, 1].
        None: 0.5 for noisy-only runs from a base model, else 1 (the fine-tuned model as
        is). Why: a self-supervised gradient is noisy (R2R's target carries five times
        the data's noise variance), so the end of the run drifts around the optimum the
        base is near; on synthetic low-photon frames (``tools/r2r_synthetic.py``) the
        fine-tuned model alone lost against the base where the midpoint gained. A bias-free
        net with averaged weights is still bias-free. The midpoint is not saved when it
        validates below the base on the held-out band.
    seed : int
    description : str
    """

    name: str
    mode: str = "clean"
    base: str | None = "gray"
    architecture: str = "small"
    corruption: CorruptionConfig = field(default_factory=CorruptionConfig)
    patch_size: int | None = None
    batch_size: int | None = None
    steps: int | None = None
    learning_rate: float | None = None
    val_every: int | None = None
    val_sigmas: tuple[float, ...] | None = None
    noisy_method: str = "r2r"
    n2n_gamma: float = 2.0
    r2r_alpha: float = 0.5
    black_level: str | float = "camera"
    tuned_weight: float | None = None
    seed: int = 0
    description: str = ""

    def check(self) -> None:
        """Raise :class:`ConfigError` naming the first bad value."""
        from .registry import _check_name

        try:
            _check_name(self.name, "model name")
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.mode not in MODES:
            raise ConfigError(f"mode={self.mode!r} is not one of {', '.join(MODES)}")
        if self.base is None and self.architecture not in PRESETS:
            raise ConfigError(
                f"architecture={self.architecture!r} is not one of {', '.join(PRESETS)}"
            )
        for key in ("patch_size", "batch_size", "steps", "val_every"):
            v = getattr(self, key)
            if v is not None and (int(v) != v or v < 1):
                raise ConfigError(f"{key}={v!r} must be a positive integer (or None for auto)")
        if self.val_sigmas is not None and not all(s > 0 for s in self.val_sigmas):
            # at sigma 0 the score is D(clean) against clean: doing nothing wins
            raise ConfigError(f"val_sigmas={self.val_sigmas!r} must all be > 0")
        if self.learning_rate is not None and not 0 < self.learning_rate <= 1:
            raise ConfigError(f"learning_rate={self.learning_rate!r} must be in (0, 1]")
        if self.noisy_method not in NOISY_METHODS:
            raise ConfigError(
                f"noisy_method={self.noisy_method!r} is not one of {', '.join(NOISY_METHODS)}"
            )
        if not (self.n2n_gamma >= 0 and np.isfinite(self.n2n_gamma)):
            raise ConfigError(f"n2n_gamma={self.n2n_gamma!r} must be >= 0")
        if not (self.r2r_alpha > 0 and np.isfinite(self.r2r_alpha)):
            raise ConfigError(f"r2r_alpha={self.r2r_alpha!r} must be > 0")
        try:
            check_black_level(self.black_level)
        except ValueError as err:
            raise ConfigError(str(err)) from None
        if self.tuned_weight is not None and not 0 < self.tuned_weight <= 1:
            raise ConfigError(f"tuned_weight={self.tuned_weight!r} must be in (0, 1]")
        if int(self.seed) != self.seed or self.seed < 0:
            raise ConfigError(f"seed={self.seed!r} must be a non-negative integer")

    def resolved_tuned_weight(self) -> float:
        """:attr:`tuned_weight`, with None resolved: 0.5 for noisy-only runs from a base."""
        if self.tuned_weight is not None:
            return float(self.tuned_weight)
        return 0.5 if self.mode == "noisy" and self.base is not None else 1.0


def average_weights(base_path: str | Path, tuned_path: str | Path, tuned_weight: float):
    """The tuned model with weights ``(1 - w) * base + w * tuned`` (WiSE-FT), as a Keras model.

    Both files must hold the same architecture; the tuned file may be a checkpoint.
    """
    from .modelfile import load_keras_model

    base_model, _ = load_keras_model(base_path)
    tuned_model, _ = load_keras_model(tuned_path)
    bw, tw = base_model.get_weights(), tuned_model.get_weights()
    if len(bw) != len(tw) or any(a.shape != b.shape for a, b in zip(bw, tw, strict=True)):
        raise ConfigError(
            f"{tuned_path} and its base {base_path} differ in architecture: cannot average"
        )
    w = float(tuned_weight)
    tuned_model.set_weights([(1.0 - w) * a + w * b for a, b in zip(bw, tw, strict=True)])
    return tuned_model


@dataclass(frozen=True)
class ValidationPreview:
    """The current model on the held-out crop, in the source's units (for the widget)."""

    region: ValidationRegion
    step: int
    noisy: np.ndarray
    denoised: np.ndarray
    scores: dict[str, float]


@dataclass
class FinetuneResult:
    """Where the model went and how it scored on the held-out region."""

    name: str
    model_path: Path
    run_dir: Path
    region: ValidationRegion
    steps_done: int
    total_steps: int
    stopped: bool
    val_psnr_initial: dict[str, float]
    val_psnr_best: dict[str, float]
    recipe: RecipeConfig
    card: ModelCard
    saved: bool = True  # False: stopped before the first validation, nothing was written


def run_dir(name: str) -> Path:
    """Checkpoint folder of a run (hidden inside the user-model folder, so never listed).

    The name is checked first: a run's folder is deleted when a fresh run starts, so a
    name such as ``..`` must never reach the file system.
    """
    from .registry import _check_name, user_model_dir

    _check_name(name, "model")
    return user_model_dir() / RUNS / name


def rename_run(old: str, new: str) -> None:
    """Move a run's checkpoints along with a renamed model (so Resume still finds them)."""
    src, dst = run_dir(old), run_dir(new)
    if src.is_dir() and not dst.exists():
        src.rename(dst)


def delete_run(name: str) -> None:
    """Remove a run's checkpoints (after its model was deleted)."""
    shutil.rmtree(run_dir(name), ignore_errors=True)


# --------------------------------------------------------------------------- recipe


@dataclass(frozen=True)
class _Base:
    card: ModelCard | None
    path: str | None
    channels: int
    multiple: int


def _base(settings: FinetuneSettings, channels_if_fresh: int, copy: Path | None = None) -> _Base:
    """The base model; ``copy``: the run's own copy of it, used when it exists (a resume).

    Why a copy: the base is read again after training (weight-space averaging) and by a
    resumed run; by name it could have been deleted, or replaced by this very run's
    result when saved under the base's own name.
    """
    from .architectures import size_multiple
    from .modelfile import read_card
    from .registry import _resolve

    if settings.base is None:
        arch = PRESETS[settings.architecture](channels_if_fresh)
        return _Base(None, None, channels_if_fresh, size_multiple(arch))
    path = copy if copy is not None and copy.is_file() else _resolve(settings.base)
    card = read_card(path)
    if card.channels not in (1, 3):
        raise ConfigError(
            f"base model {settings.base!r} has {card.channels} channels; fine-tuning supports "
            "1 (gray) or 3 (colour)"
        )
    return _Base(card, str(path), card.channels, card.size_multiple)


def _floor_to(n: int, m: int) -> int:
    return (n // m) * m


def _half_resolution(settings: FinetuneSettings) -> bool:
    """Neighbor2Neighbor: crops of twice the patch are sub-sampled to the patch."""
    return settings.mode == "noisy" and settings.noisy_method == "n2n"


def _default_patch(train: Sequence[np.ndarray], multiple: int, half: bool) -> int:
    largest = max(train, key=lambda im: im.shape[0] * im.shape[1])
    side = min(largest.shape[:2])
    if half:
        side //= 2  # crops of twice the patch are sub-sampled to the patch
    p = _floor_to(min(64, side), multiple)
    return max(p, _floor_to(8 + multiple - 1, multiple))


def _default_val_sigmas(corruption: CorruptionConfig) -> tuple[float, ...]:
    lo, hi = corruption.sigma_range
    inside = tuple(s for s in (15.0, 25.0, 50.0) if lo <= s <= hi)
    return inside or (round((lo + hi) / 2, 1),)


def _default_val_photons(corruption: CorruptionConfig) -> tuple[float, ...]:
    """The photon range's geometric middle (the median of its log-uniform draw), if drawn."""
    if corruption.poisson_gaussian_prob <= 0:
        return ()
    lo, hi = corruption.photons_range
    return (float(f"{np.sqrt(lo * hi):.3g}"),)


def _validation_noise(settings: FinetuneSettings) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Gaussian sigmas and photon counts the ``"clean"`` mode validates at: the run's noise.

    Why: a run of pure shot noise validated at sigma 0 scored D(clean) against clean,
    which rewards doing nothing, and one validated on Gaussian noise it never trained
    on chose checkpoints on the wrong task. Other modes score their own data; their
    recipe keeps sigmas only as a placeholder (a recipe needs one).
    """
    c = settings.corruption
    if settings.mode != "clean":
        return settings.val_sigmas or _default_val_sigmas(c), ()
    gaussian = c.sigma_range[1] > 0 and c.poisson_gaussian_prob < 1
    if not gaussian and c.poisson_gaussian_prob <= 0:
        raise ConfigError(
            f"the synthetic noise adds no noise (sigma range {c.sigma_range}, no "
            "Poisson-Gaussian share): a model trained on it learns nothing to denoise; raise "
            "sigma max or the Poisson-Gaussian share"
        )
    sigmas = settings.val_sigmas or (_default_val_sigmas(c) if gaussian else ())
    return sigmas, _default_val_photons(c)


def _mode_text(settings: FinetuneSettings) -> str:
    """The kind of training data, with the self-supervised method for noisy-only data."""
    if settings.mode == "noisy":
        return f"noisy images only ({NOISY_METHODS[settings.noisy_method]})"
    return MODES[settings.mode]


def build_recipe(
    settings: FinetuneSettings,
    train: Sequence[np.ndarray],
    channels: int,
    multiple: int,
    base_card: ModelCard | None = None,
    base_path: str | None = None,
) -> RecipeConfig:
    """The training recipe for ``settings``, with defaults from the data size.

    Defaults: patch 64 px (smaller for small images, a multiple of the model's size
    multiple), batch 8, steps ``30 * pixels / (batch * crop^2)`` (30 passes; the crop is
    the patch, twice it for Neighbor2Neighbor) clipped to 100..2000, learning rate 2e-4
    from a base model or 1e-3 afresh (cosine decay to 1/20), a validation every tenth of
    the run, at the run's own noise in ``"clean"`` mode (:func:`_validation_noise`).

    Parameters
    ----------
    settings : FinetuneSettings
    train : sequence of ndarray
        The training images (after the validation band was removed).
    channels, multiple : int
        The model's channels and size multiple.
    base_card, base_path : optional
        The base model's card and file (None for a fresh model).
    """
    settings.check()
    half = _half_resolution(settings)
    patch = int(settings.patch_size or _default_patch(train, multiple, half))
    if patch % multiple:
        raise ConfigError(
            f"patch_size={patch} must be a multiple of the model's size multiple {multiple}"
        )
    batch = int(settings.batch_size or 8)
    pixels = float(sum(im.shape[0] * im.shape[1] for im in train))
    crop = 2 * patch if half else patch  # a Neighbor2Neighbor sample reads a crop of twice it
    auto_steps = int(np.clip(round(30 * pixels / (batch * crop**2), -1), 100, 2000))
    steps = int(settings.steps or auto_steps)
    lr = float(settings.learning_rate or (2e-4 if base_path else 1e-3))
    val_every = int(settings.val_every or max(1, steps // 10))
    if base_card is not None and base_card.recipe is not None:
        arch = base_card.recipe.architecture.model_dump()
    elif base_card is not None:
        arch = DnCNNConfig(channels=channels).model_dump()  # placeholder: the base is cloned
    else:
        arch = PRESETS[settings.architecture](channels).model_dump()
    val_sigmas, val_photons = _validation_noise(settings)
    training = TrainingConfig(
        steps=steps,
        batch_size=batch,
        learning_rate=lr,
        min_learning_rate=lr / 20,
        warmup_steps=min(50 if base_path else 200, steps // 10),
        val_every=val_every,
        val_sigmas=tuple(float(s) for s in val_sigmas),
        val_photons=val_photons,
        checkpoint_every=val_every,
        log_every=max(1, min(10, steps // 100)),
        seed=int(settings.seed),
    )
    origin = f"new {settings.architecture} model"
    if base_path:
        origin = f"fine-tuned from {settings.base}"
    description = settings.description or f"{_mode_text(settings)}; {origin}"
    return parse_recipe(
        {
            "name": settings.name,
            "description": description,
            "architecture": arch,
            "corruption": settings.corruption.model_dump(),
            "data": DataConfig(patch_size=patch, color=channels == 3).model_dump(),
            "training": training.model_dump(),
            "init_from": base_path,
        },
        source="fine-tuning settings",
    )


# --------------------------------------------------------------------------- validation


def _predict(model, image: np.ndarray, multiple: int) -> np.ndarray:
    from .train import _predict_padded

    return _predict_padded(model, image, multiple)


_CLEAN_VAL_STREAM = 11  # default_rng([seed, 11, k]): the k-th validation level of "clean" runs


def _clean_validation_pairs(
    crop: np.ndarray,
    corruption: CorruptionConfig,
    sigmas: Sequence[float],
    photons: Sequence[float],
    seed: int,
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """The clean crop corrupted as the run corrupts its patches, once per validation level.

    The run's corruption (:func:`~src_models.corruptions.corrupt`: its blur, subsampling,
    correlation, clipping, ...) with the noise pinned: Gaussian at each sigma (key
    ``"25"``), or Poisson-Gaussian at each photon count at the peak with the middle of
    the read-noise range (key ``"20ph"``); never the near-clean branch. Fixed generators,
    so every validation (and a resumed run's) scores the same inputs.

    Returns
    -------
    list of (noisy, clean, key)
    """
    from .corruptions import corrupt

    pinned = corruption.model_copy(update={"clean_prob": 0.0})
    read = float(np.mean(corruption.read_noise_range))
    levels = [
        (f"{s:g}", {"poisson_gaussian_prob": 0.0, "sigma_range": (float(s), float(s))})
        for s in sigmas
    ]
    levels += [
        (
            f"{p:g}ph",
            {
                "poisson_gaussian_prob": 1.0,
                "photons_range": (float(p), float(p)),
                "read_noise_range": (read, read),
            },
        )
        for p in photons
    ]
    out = []
    for k, (key, noise) in enumerate(levels):
        rng = np.random.default_rng([int(seed), _CLEAN_VAL_STREAM, k])
        noisy, _ = corrupt(crop, pinned.model_copy(update=noise), rng)
        out.append((noisy, crop, key))
    return out


class _Evaluator:
    """Scores the held-out crop for :func:`~src_models.train.train` and reports a preview.

    Keys: for ``"clean"`` the noise level, a sigma (``"25"``) or photons at the peak
    (``"20ph"``), of the run's own corruption (:func:`_clean_validation_pairs`; PSNR
    against the clean crop), ``"pair"``
    (PSNR of the denoised noisy crop against the clean one); for noisy-only data a
    self-supervised score that rises as the true error falls: ``"n2n"`` (Neighbor2Neighbor
    runs), the PSNR of ``D(g1)`` against ``g2`` on fixed neighbour sub-images of the crop,
    or ``"r2r"`` (Recorrupted-to-Recorrupted runs), the PSNR of ``D(y + alpha z)`` against
    ``y - z / alpha`` over fixed full-resolution recorruptions of the crop
    (:func:`~src_models.r2r.validation_pairs`), which scores the model at the scale it
    is trained and used at.
    """

    def __init__(
        self,
        mode: str,
        crop: np.ndarray,
        reference: np.ndarray | None,
        sigmas: Sequence[float],
        seed: int,
        multiple: int,
        region: ValidationRegion,
        sample: Sample,
        on_preview: Callable[[ValidationPreview], None] | None,
        r2r: tuple[PoissonGaussian, float] | None = None,
        r2r_signal: np.ndarray | None = None,
        corruption: CorruptionConfig | None = None,
        photons: Sequence[float] = (),
    ) -> None:
        from .n2n import neighbor_pair
        from .r2r import validation_pairs

        self.mode, self.multiple, self.region, self.sample = mode, multiple, region, sample
        self.on_preview = on_preview
        self.groups: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {}
        if mode == "clean":
            corruption = corruption or CorruptionConfig()
            self.pairs = _clean_validation_pairs(crop, corruption, sigmas, photons, seed)
            # shown: the sigma nearest 25, else the first photon level
            mid = int(np.argmin([abs(s - 25.0) for s in sigmas])) if len(sigmas) else 0
            self.shown = self.pairs[mid][0]
        elif mode == "pairs":
            self.pairs = [(crop, reference, PAIR_KEY)]
            self.shown = crop
        elif r2r is not None:  # noisy-only, Recorrupted-to-Recorrupted: (noise, alpha)
            self.pairs = []
            pairs = validation_pairs(crop, r2r[0], r2r[1], seed, signal=r2r_signal)
            self.groups = {R2R_KEY: pairs}
            self.shown = crop
        else:
            g1, g2, _ = neighbor_pair(crop[None], np.random.default_rng([seed, 5]))
            self.pairs = [(g1[0], g2[0], N2N_KEY)]
            self.shown = crop

    def __call__(self, model) -> dict[str, float]:
        from .data import SCORE_MAX_DB, psnr

        scores = {}
        for noisy, target, key in self.pairs:
            scores[key] = psnr(target, _predict(model, noisy, self.multiple), max_db=SCORE_MAX_DB)
        for key, group in self.groups.items():  # PSNR of the mean squared error over the group
            mse = np.mean(
                [
                    np.mean((np.clip(_predict(model, x, self.multiple), 0.0, 1.0) - t) ** 2)
                    for x, t in group
                ]
            )
            db = float(10.0 * np.log10(1.0 / mse)) if mse > 0 else SCORE_MAX_DB
            scores[key] = min(db, SCORE_MAX_DB)
        if self.on_preview is not None:
            denoised = _predict(model, self.shown, self.multiple)
            self.on_preview(
                ValidationPreview(
                    region=self.region,
                    step=_steps_done(model),
                    noisy=to_source_units(self.shown, self.sample),
                    denoised=to_source_units(denoised, self.sample),
                    scores=dict(scores),
                )
            )
        return scores


# --------------------------------------------------------------------------- run


class StoppedBeforeTraining(Exception):
    """Stop was asked while the data were being prepared: nothing was trained or saved."""


def _check_stop(should_stop: Callable[[], bool] | None) -> None:
    """Why between preparation steps: reading and normalising big layers, and estimating
    each image's noise for R2R, can take a while before the first training step polls."""
    if should_stop is not None and should_stop():
        raise StoppedBeforeTraining("stopped before training began: nothing saved")


def _fresh_channels(images: Sequence[SourceImage]) -> int:
    return 3 if images and all(im.rgb for im in images) else 1


def _target_path(name: str, allow_existing: bool) -> Path:
    from .registry import _bundled_names, user_model_dir

    if name in _bundled_names():
        raise ConfigError(f"{name!r} is the name of a bundled model; choose another name")
    path = user_model_dir() / f"{name}.keras"
    if path.exists() and not allow_existing:
        raise ConfigError(
            f"a user model named {name!r} already exists ({path}); choose another name, "
            "delete it, or overwrite it"
        )
    return path


def finetune(
    settings: FinetuneSettings,
    images: Sequence[SourceImage],
    *,
    targets: Sequence[SourceImage] | None = None,
    resume: bool = False,
    overwrite: bool = False,
    on_progress: Callable[[TrainProgress], None] | None = None,
    on_preview: Callable[[ValidationPreview], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    max_seconds: float | None = None,
) -> FinetuneResult:
    """Train on the user's images and save the best model to the user-model folder.

    Parameters
    ----------
    settings : FinetuneSettings
    images : sequence of SourceImage
        Clean images (``"clean"``), noisy images (``"pairs"``, ``"noisy"``).
    targets : sequence of SourceImage, optional
        The clean partners of ``images`` in ``"pairs"`` mode (same shapes, same order).
    resume : bool
        Continue the stopped run of the same name from its checkpoint.
    overwrite : bool
        Replace an existing user model of that name (resume implies it).
    on_progress : callable, optional
        Receives :class:`~src_models.train.TrainProgress` (loss, validation scores, ETA).
    on_preview : callable, optional
        Receives a :class:`ValidationPreview` after every validation (and before training).
    should_stop : callable, optional
        Polled every step; the run then saves the best model so far and returns.
        Stopped before the first validation, it saves nothing (``result.saved`` is
        False): no trained weights have been scored yet. Resume continues either way.
    max_seconds : float, optional
        Wall-clock budget (stops like ``should_stop``).

    Returns
    -------
    FinetuneResult

    Raises
    ------
    ConfigError
        Bad settings, a taken name, or nothing to resume.
    ValueError
        Unusable images (shapes, dtypes, too small).
    StoppedBeforeTraining
        ``should_stop`` said stop while the data were prepared (nothing written).
    """
    from .data import PairSampler
    from .modelfile import copy_with_card, read_card, save_model
    from .n2n import Neighbor2NeighborSampler
    from .r2r import Recorrupted2RecorruptedSampler
    from .train import CHECKPOINT, train

    settings.check()
    if settings.mode == "pairs" and not targets:
        raise ConfigError("mode 'pairs' needs clean targets for the noisy images")
    if settings.mode != "pairs" and targets:
        raise ConfigError(f"mode {settings.mode!r} takes no targets (only 'pairs' does)")
    target_path = _target_path(settings.name, overwrite or resume)
    out = run_dir(settings.name)
    if resume and (out / CHECKPOINT).is_file():  # before the layers are prepared
        _check_scheme(out / RUN_SETTINGS, settings.name)
    base = _base(settings, _fresh_channels(images), out / BASE_COPY if resume else None)

    names = [im.name for im in images]
    if settings.mode == "pairs":
        inputs, cleans = paired_samples(
            images, targets or [], base.channels, settings.black_level
        )
    else:
        inputs, cleans = samples(images, base.channels, settings.black_level), None
    _check_stop(should_stop)  # before an earlier run's folder is replaced
    region = choose_validation(inputs, names, base.multiple)
    train_in, crop, crop_sample = split_off_validation(inputs, region)
    reference = None
    train_clean = None
    if cleans is not None:
        train_clean, reference, _ = split_off_validation(cleans, region)

    recipe = build_recipe(settings, train_in, base.channels, base.multiple, base.card, base.path)
    t_cfg = recipe.training
    sources = [im.describe() for im in images]
    if targets:
        sources += [f"clean: {t.describe()}" for t in targets]
    identity = _run_identity(settings, sources)
    if resume:
        if not (out / CHECKPOINT).is_file():
            raise ConfigError(f"nothing to resume: no checkpoint of {settings.name!r} in {out}")
        _check_same_run(out / RUN_SETTINGS, identity, settings.name)
    else:
        if out.exists():
            shutil.rmtree(out)
        out.mkdir(parents=True)
        (out / RUN_SETTINGS).write_text(json.dumps(identity, indent=1), encoding="utf-8")
        if base.path is not None:  # read again after training, and by a Resume
            shutil.copyfile(base.path, out / BASE_COPY)
            base = replace(base, path=str(out / BASE_COPY))

    sampler = None
    r2r = None
    r2r_signal = None
    if settings.mode == "pairs":
        sampler = PairSampler(
            train_in, train_clean, recipe.data.patch_size, t_cfg.batch_size, seed=t_cfg.seed
        )
    elif settings.mode == "noisy" and settings.noisy_method == "r2r":
        # the noise of each training image, estimated once on the whole (normalised) image
        sampler = Recorrupted2RecorruptedSampler(
            train_in,
            recipe.data.patch_size,
            t_cfg.batch_size,
            seed=t_cfg.seed,
            alpha=settings.r2r_alpha,
        )
        # the held-out crop is a band of one sample: its training rows gave its noise
        index = next(i for i, s in enumerate(inputs) if s is crop_sample)
        r2r = (sampler.noise[index], settings.r2r_alpha)
        if base.path is not None:  # the base model's estimate beats a blur at edges
            from .modelfile import load_keras_model

            r2r_signal = _predict(load_keras_model(base.path)[0], crop, base.multiple)
    elif settings.mode == "noisy":
        sampler = Neighbor2NeighborSampler(
            train_in,
            recipe.data.patch_size,
            t_cfg.batch_size,
            seed=t_cfg.seed,
            gamma=settings.n2n_gamma,
            total_steps=t_cfg.steps,
        )
    _check_stop(should_stop)
    evaluator = _Evaluator(
        settings.mode,
        crop,
        reference,
        t_cfg.val_sigmas,
        t_cfg.seed,
        base.multiple,
        region,
        crop_sample,
        on_preview,
        r2r=r2r,
        r2r_signal=r2r_signal,
        corruption=recipe.corruption,
        photons=t_cfg.val_photons,
    )
    extra: dict[str, Any] = {
        "training_data": sources,
        "base_model": settings.base,
    }
    if base.card is not None:
        if base.card.recipe is None:
            extra["kind"] = base.card.kind
        if settings.mode != "clean":
            extra["sigma_range"] = tuple(base.card.sigma_range)
    result = train(
        recipe,
        out,
        resume=resume,
        images=train_in if settings.mode == "clean" else None,
        sampler=sampler,
        evaluator=evaluator,
        on_progress=on_progress,
        should_stop=should_stop,
        max_seconds=max_seconds,
        extra_card=extra,
        keep_initial=base.card is not None,  # never replace a base by a worse model
    )

    outcome = partial(
        FinetuneResult,
        name=settings.name,
        model_path=target_path,
        run_dir=out,
        region=region,
        steps_done=result.steps_done,
        total_steps=t_cfg.steps,
        stopped=result.stopped,
        val_psnr_initial=dict(result.val_psnr_initial),
        recipe=recipe,
    )
    if result.stopped and result.steps_done < t_cfg.val_every:
        # No trained weights were scored yet: what the run dir holds as "best" is the
        # starting model (a copy of the base, or an untrained network), never worth a name.
        return outcome(
            val_psnr_best=dict(result.val_psnr_initial),
            card=read_card(result.model_path),
            saved=False,
        )
    best = read_card(result.model_path)
    kept = (
        f"the model after step {best.steps_done}"
        if best.steps_done
        else "the starting model (no validation beat it)"
    )
    val_after = dict(result.val_psnr_best)
    weight = settings.resolved_tuned_weight()
    averaged = None
    if weight < 1.0 and base.path is not None:
        last = read_card(out / CHECKPOINT)
        candidate = average_weights(base.path, out / CHECKPOINT, weight)
        evaluator.on_preview = None  # scored only: the preview shows trained steps
        val_candidate = evaluator(candidate)
        # as for checkpoints: never a model that validates worse than its base
        if _mean(val_candidate) >= _mean(result.val_psnr_initial):
            averaged, val_after, best = candidate, val_candidate, last
            kept = (
                f"{1 - weight:g} x the base model's weights + {weight:g} x those after step "
                f"{last.steps_done} (weight-space average, WiSE-FT)"
            )
        else:
            kept += (
                f"; the weight-space average with the base validated lower "
                f"({_json_scores(val_candidate)})"
            )
    from .registry import BLACK_LEVEL_NOTE

    notes = dict(best.notes)
    notes.update(
        {
            "mode": settings.mode,
            "noisy_method": settings.noisy_method if settings.mode == "noisy" else "",
            "black_level": _black_level_text(settings.black_level),
            # read by the Denoise widget, the command line and the function: they denoise
            # with the same black level unless told otherwise (registry.ModelInfo.black_level)
            BLACK_LEVEL_NOTE: (
                f"{float(settings.black_level):g}"
                if not isinstance(settings.black_level, str)
                else settings.black_level
            ),
            "sources": json.dumps(sources),
            "corruption": recipe.corruption.model_dump_json() if settings.mode == "clean" else "",
            "validation_region": json.dumps(region.as_dict()),
            "validation_score": _score_meaning(settings),
            "val_psnr_before": _json_scores(result.val_psnr_initial),
            "val_psnr_after": _json_scores(val_after),
            "steps_planned": str(t_cfg.steps),
            "steps_run": str(result.steps_done),
            "stopped_early": str(result.stopped).lower(),
            "kept": kept,
        }
    )
    if isinstance(sampler, Recorrupted2RecorruptedSampler):
        notes["r2r_alpha"] = f"{settings.r2r_alpha:g}"
        notes["r2r_noise"] = "per training image, normalised units: " + sampler.describe_noise()
    card = best.model_copy(update={"name": settings.name, "notes": notes})
    card = ModelCard.model_validate(card.model_dump())
    if averaged is not None:
        save_model(averaged, target_path, card)
    else:
        copy_with_card(result.model_path, target_path, card)
    from .registry import clear_cache

    clear_cache()
    return outcome(val_psnr_best=val_after, card=card)


RUN_SETTINGS = "settings.json"  # what a run trains on and how; Resume must match it
BASE_COPY = "base.keras"  # the run's copy of its base model (see _base)
# how a run chooses its validation data and automatic steps; a stopped run of another
# scheme cannot resume (its best score came from other held-out data or noise)
RUN_SCHEME = 2
# everything but the length of the run (steps, rate, validation interval may change on Resume)
_RESUME_KEYS = (
    "mode",
    "base",
    "architecture",
    "corruption",
    "patch_size",
    "batch_size",
    "val_sigmas",
    "noisy_method",
    "n2n_gamma",
    "r2r_alpha",
    "black_level",
    "tuned_weight",
    "seed",
)


def _run_identity(settings: FinetuneSettings, sources: list[str]) -> dict[str, Any]:
    """The settings and data a run's checkpoint and best score belong to, as JSON values."""
    values = {key: getattr(settings, key) for key in _RESUME_KEYS}
    values["corruption"] = settings.corruption.model_dump(mode="json")
    values["sources"] = sources
    values["scheme"] = RUN_SCHEME
    return json.loads(json.dumps(values, default=str))


def _check_scheme(path: Path, name: str) -> None:
    """Refuse to resume a run started by a version with another :data:`RUN_SCHEME`."""
    saved = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    if saved.get("scheme") != RUN_SCHEME:
        raise ConfigError(
            f"the stopped run of {name!r} was started by an earlier napari-bfcnn, which chose "
            "its validation data, validation noise and automatic steps differently: train "
            "anew (Train) to start over"
        )


def _check_same_run(path: Path, identity: dict[str, Any], name: str) -> None:
    """Refuse to resume with other data or settings.

    Why: the checkpoint, its optimiser state and the best validation score so far
    belong to the stopped run; another noise range, base or layer would be scored
    against a best from other data, and averaged with another base.
    """
    _check_scheme(path, name)
    saved = json.loads(path.read_text(encoding="utf-8"))
    changed = [key for key in identity if saved.get(key) != identity[key]]
    if changed:
        what = ", ".join("layers" if key == "sources" else key for key in changed)
        raise ConfigError(
            f"cannot resume {name!r} with other settings or layers (changed: {what}); "
            "set them back as they were, or train anew (Train) to start over"
        )


def _black_level_text(black_level: str | float) -> str:
    if black_level == "camera":
        return "estimated per plane for camera data (12/16-bit, not RGB), else none"
    if black_level == "auto":
        return "estimated per plane (auto)"
    if black_level == "none":
        return "none (the plane's minimum when negative)"
    return f"{float(black_level):g}"


def _steps_done(model) -> int:
    """Optimizer steps taken so far (kept in checkpoints, so right after a resume too)."""
    opt = getattr(model, "optimizer", None)
    try:
        return int(np.asarray(opt.iterations)) if opt is not None else 0
    except (AttributeError, TypeError, ValueError):
        return 0


def _mean(scores: dict[str, float]) -> float:
    return float(np.mean(list(scores.values()))) if scores else -np.inf


def _json_scores(scores: dict[str, float]) -> str:
    return json.dumps({k: round(float(v), 3) for k, v in scores.items()})


def _score_meaning(settings: FinetuneSettings) -> str:
    mode = settings.mode
    if mode == "clean":
        return (
            "PSNR (dB) on the held-out crop corrupted as the training patches (fixed draws), "
            "with Gaussian noise of each sigma ('25': 8-bit scale, relative to the plane's "
            "peak) or Poisson-Gaussian noise of each count of photons at the peak ('20ph', "
            "read noise at the middle of its range)"
        )
    if mode == "pairs":
        return "PSNR (dB) of the denoised held-out noisy crop against its clean partner"
    if settings.noisy_method == "r2r":
        return (
            "Recorrupted-to-Recorrupted self-supervised score: PSNR (dB) of D(y + alpha z) "
            "against y - z / alpha over fixed recorruptions of the held-out crop (rises as the "
            "true error at 1 + alpha^2 times the noise variance falls; not a PSNR against a "
            "clean image)"
        )
    return (
        "Neighbor2Neighbor self-supervised score: PSNR (dB) of D(g1) against g2 on the held-out "
        "crop (rises as the true error falls; not a PSNR against a clean image)"
    )
