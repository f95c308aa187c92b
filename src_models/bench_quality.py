"""Benchmark quality: test sets, seeded noisy inputs, and PSNR / SSIM per image and method.

Why one seeded generator per (dataset, image, sigma): every method, including
baselines computed on another day or machine and read from a cache, sees the very
same noisy image, and a run on a subset of images or sigmas draws the same noise
as the full run. Noise is added in float to the 8-bit clean image and never
clipped; outputs are clipped to [0, 255] before scoring (the protocol of the
BF-CNN, DnCNN and BM3D papers).
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

__all__ = [
    "COLOR_SETS",
    "GRAY_SETS",
    "QUICK_SIGMAS",
    "SIGMAS",
    "TTA",
    "ImageScore",
    "Method",
    "Sample",
    "dataset_samples",
    "denoiser_method",
    "input_crc",
    "load_clean",
    "make_noisy",
    "noise_seed",
    "run_quality",
    "score",
    "tta_label",
]

GRAY_SETS = ("BSD68", "Set12")
COLOR_SETS = ("CBSD68", "McMaster")
SIGMAS = (1, 2, 5, 15, 25, 35, 50, 75, 90)
QUICK_SIGMAS = (5, 25, 50)


@dataclass(frozen=True)
class Sample:
    """One clean test image: its set, file name and whether the set is colour."""

    dataset: str
    name: str
    path: Path
    color: bool


@dataclass
class ImageScore:
    """The score of one method on one noisy image (one line of ``per_image.csv``)."""

    dataset: str
    image: str
    sigma: float
    method: str
    kind: str
    psnr: float
    ssim: float
    seconds: float
    input_crc: int


@dataclass
class Method:
    """A denoising method: ``run(noisy, sigma) -> estimate``, both float [0, 255] arrays.

    ``color`` says which test sets it runs on (colour or gray); ``kind`` is one of
    "model", "model-per-channel", "reference" or "baseline".
    """

    label: str
    kind: str
    color: bool
    run: Callable[[np.ndarray, float], np.ndarray]


def dataset_samples(data_dir: str | Path, dataset: str, limit: int | None = None) -> list[Sample]:
    """The images of ``<data_dir>/eval/<dataset>`` sorted by file name (the first ``limit``).

    Parameters
    ----------
    data_dir : str or Path
        The shared data folder (holding ``eval/``).
    dataset : str
        One of :data:`GRAY_SETS` or :data:`COLOR_SETS`.
    limit : int, optional
        Keep only the first ``limit`` images (``--quick``).
    """
    from .data import list_images

    if dataset not in GRAY_SETS + COLOR_SETS:
        raise ValueError(
            f"unknown test set {dataset!r}; expected one of {', '.join(GRAY_SETS + COLOR_SETS)}"
        )
    folder = Path(data_dir) / "eval" / dataset
    if not folder.is_dir():
        raise FileNotFoundError(f"test set {dataset} not found: no folder {folder}")
    files = list_images([folder])
    if limit is not None:
        files = files[: max(0, int(limit))]
    return [Sample(dataset, f.name, f, dataset in COLOR_SETS) for f in files]


def load_clean(sample: Sample) -> np.ndarray:
    """The clean image as float64 on the 8-bit scale: (H, W) gray or (H, W, 3) colour.

    Values are rounded to whole 8-bit levels, since every test set is stored as 8-bit.
    """
    from .data import load_image

    img = load_image(sample.path, color=sample.color).astype(np.float64) * 255.0
    img = np.round(img)
    return img if sample.color else img[..., 0]


def noise_seed(dataset: str, image: str, sigma: float) -> list[int]:
    """Seed of the noise for one (dataset, image, sigma): ``[crc32("dataset/image"), sigma]``."""
    s = float(sigma)
    if s < 0 or s != round(s):
        raise ValueError(f"benchmark sigmas must be whole non-negative numbers (got {sigma!r})")
    return [zlib.crc32(f"{dataset}/{image}".encode()), int(s)]


def make_noisy(clean: np.ndarray, sample: Sample, sigma: float) -> np.ndarray:
    """``clean + sigma * N(0, 1)`` from the seeded generator, as float32 (not clipped).

    Why not :func:`corruptions.add_gaussian`: the cached baselines depend on these
    exact pixels, so the recipe lives next to the cache and never changes.
    """
    rng = np.random.default_rng(noise_seed(sample.dataset, sample.name, sigma))
    noise = rng.standard_normal(clean.shape)
    return (clean + float(sigma) * noise).astype(np.float32)


def input_crc(noisy: np.ndarray) -> int:
    """CRC32 of the noisy image's float32 bytes: proves two methods saw the same input."""
    return zlib.crc32(np.ascontiguousarray(noisy, dtype=np.float32).tobytes())


def score(clean: np.ndarray, estimate: np.ndarray, color: bool) -> tuple[float, float]:
    """PSNR and SSIM (peak 255) of an estimate clipped to [0, 255].

    SSIM uses the settings of Wang et al. (Gaussian 11x11 window, sigma 1.5,
    population covariance) as :func:`skimage.metrics.structural_similarity` documents.
    """
    from skimage.metrics import structural_similarity

    from .data import psnr

    est = np.clip(np.asarray(estimate, dtype=np.float64), 0.0, 255.0)
    if est.shape != clean.shape:
        raise ValueError(f"estimate has shape {est.shape}, clean image {clean.shape}")
    p = psnr(clean, est, peak=255.0)
    s = structural_similarity(
        clean,
        est,
        data_range=255.0,
        channel_axis=-1 if color else None,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return float(p), float(s)


TTA = 8  # transforms averaged in the benchmark's test-time augmentation rows (--tta-models)


def tta_label(name: str, tta: int) -> str:
    """A model's row label with test-time augmentation: ``"gray (TTA ×8)"``."""
    return name if tta == 1 else f"{name} (TTA \u00d7{tta})"


def denoiser_method(
    denoiser, color: bool, label: str | None = None, kind: str = "model", tta: int = 1
) -> Method:
    """Wrap a :class:`Denoiser` as a method on gray (``color=False``) or colour sets.

    The noisy float image is passed as is with ``offset=0``: by homogeneity the
    network then sees exactly the noisy pixels, as in the papers' protocol. A
    one-channel model on a colour set runs channel by channel. ``tta`` > 1: the
    model averaged over that many flips and transposes (:meth:`Denoiser.denoise`).
    """

    def run(noisy: np.ndarray, sigma: float) -> np.ndarray:
        return denoiser.denoise(noisy, channel_axis=-1 if color else None, offset=0.0, tta=tta)

    return Method(label or tta_label(denoiser.name, tta), kind, color, run)


def run_quality(
    samples: Iterable[Sample],
    sigmas: Sequence[float],
    methods: Sequence[Method],
    log: Callable[[str], None] | None = None,
    keep: Callable[[Sample, float], bool] | None = None,
) -> tuple[list[ImageScore], dict]:
    """Score the noisy input and every applicable method on every image and sigma.

    Parameters
    ----------
    samples : iterable of Sample
    sigmas : sequence of float
        Noise levels on the 8-bit scale.
    methods : sequence of Method
        Each runs on the samples whose ``color`` matches its own.
    log : callable, optional
        Receives one progress line per image and sigma.
    keep : callable, optional
        ``keep(sample, sigma)`` True: the outputs of that image are returned too.

    Returns
    -------
    scores : list of ImageScore
        The noisy row (method "noisy") first, then the methods, per image and sigma.
    kept : dict
        ``(dataset, image, sigma) -> {"clean", "noisy", <label>: output}`` for ``keep``.
    """
    scores: list[ImageScore] = []
    kept: dict = {}
    for sample in samples:
        clean = load_clean(sample)
        for sigma in sigmas:
            noisy = make_noisy(clean, sample, sigma)
            crc = input_crc(noisy)
            p, s = score(clean, noisy, sample.color)
            scores.append(
                ImageScore(
                    sample.dataset, sample.name, float(sigma), "noisy", "noisy", p, s, 0.0, crc
                )
            )
            store = keep is not None and keep(sample, sigma)
            if store:
                kept[(sample.dataset, sample.name, float(sigma))] = {"clean": clean, "noisy": noisy}
            parts = []
            for m in methods:
                if m.color != sample.color:
                    continue
                t0 = time.perf_counter()
                out = m.run(noisy.copy(), float(sigma))  # a copy: no method can alter the input
                dt = time.perf_counter() - t0
                p, s = score(clean, out, sample.color)
                scores.append(
                    ImageScore(
                        sample.dataset, sample.name, float(sigma), m.label, m.kind, p, s, dt, crc
                    )
                )
                parts.append(f"{m.label} {p:.2f}")
                if store:
                    kept[(sample.dataset, sample.name, float(sigma))][m.label] = out
            if log is not None:
                log(
                    f"[{sample.dataset}] {sample.name} sigma {sigma:g}: noisy "
                    f"{scores[-len(parts) - 1].psnr:.2f}" + "".join(f", {t}" for t in parts)
                )
    return scores, kept
