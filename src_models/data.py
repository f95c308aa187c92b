"""Training data: find and load clean images, cut reproducible noisy/clean patch batches.

Why plain numpy: the same batches feed the TensorFlow and JAX backends, and every
batch is a pure function of (seed, step), so a resumed run sees exactly the batches
it would have seen without the interruption.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .config import CorruptionConfig, FluorescenceConfig
from .corruptions import add_gaussian, check_seed, corrupt, poisson_gaussian

__all__ = [
    "IMAGE_SUFFIXES",
    "SCORE_MAX_DB",
    "PairSampler",
    "PatchSampler",
    "check_images",
    "fluorescence_like",
    "list_images",
    "load_image",
    "photon_validation_set",
    "psnr",
    "split_train_val",
    "validation_set",
]

SCORE_MAX_DB = 100.0  # validation PSNRs are capped here: a perfect score must fit in JSON

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".tif", ".tiff", ".bmp")

# Non-zero stream tags: numpy seed sequences ignore trailing zeros, so [seed, step] and
# [seed, step, 0] would otherwise be the same stream. Training keys put the tag after the
# step ([seed, step, tag, i]), validation keys after the seed ([seed, 3, j, k]), so a few
# can coincide (validation image 2's noise is step 3's noise for sample k): harmless, as
# the validation images are held out, but the streams are not strictly disjoint.
_PATCH_STREAM = 1
_NOISE_STREAM = 2
_VAL_STREAM = 3
_FLUORESCENCE_STREAM = 4


def list_images(paths: Sequence[str | Path]) -> list[Path]:
    """List image files from folders (not recursive, sorted by name) and single files.

    Parameters
    ----------
    paths : sequence of str or Path
        Folders or image files, in the order wanted; duplicates are dropped.

    Returns
    -------
    list of Path
        Files with a suffix in :data:`IMAGE_SUFFIXES` (any case); hidden files are skipped.

    Raises
    ------
    FileNotFoundError
        A path does not exist, or a folder holds no image.
    ValueError
        No path is given, or a file given directly is not a supported image type.
    """
    if isinstance(paths, (str, Path)):
        paths = [paths]
    if not paths:
        raise ValueError("no image paths given")
    found: list[Path] = []
    for p in paths:
        p = Path(p).expanduser()
        if p.is_dir():
            files = sorted(
                f
                for f in p.iterdir()
                if f.is_file()
                and f.suffix.lower() in IMAGE_SUFFIXES
                and not f.name.startswith(".")
            )
            if not files:
                raise FileNotFoundError(
                    f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}"
                )
            found.extend(files)
        elif p.is_file():
            if p.suffix.lower() not in IMAGE_SUFFIXES:
                raise ValueError(
                    f"{p} is not a supported image file (suffix {p.suffix!r}; "
                    f"expected one of {', '.join(IMAGE_SUFFIXES)})"
                )
            found.append(p)
        else:
            raise FileNotFoundError(f"image path does not exist: {p}")
    return list(dict.fromkeys(found))


def _read_raw(path: Path) -> np.ndarray:
    if path.suffix.lower() in (".tif", ".tiff"):
        import tifffile

        return np.asarray(tifffile.imread(path))
    from .files import read_pixels

    return read_pixels(path)


def _to_unit_float(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.dtype == bool:
        return arr.astype(np.float32)
    if np.issubdtype(arr.dtype, np.integer):
        return (arr.astype(np.float64) / np.iinfo(arr.dtype).max).astype(np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        out = arr.astype(np.float32)
        if not np.all(np.isfinite(out)):
            raise ValueError(f"image {path} contains NaN or infinite values")
        lo, hi = float(out.min()), float(out.max())
        if lo < 0.0 or hi > 1.0:
            # the recipe's noise is relative to full scale 1.0: 8-bit or photon counts stored
            # as floats would otherwise train with next to no noise
            lo = min(lo, 0.0)
            warnings.warn(
                f"float image {path} spans [{lo:g}, {hi:g}], not [0, 1]: rescaled to [0, 1] "
                "(the recipe's sigmas are relative to full scale 1)",
                stacklevel=3,
            )
            out = (out - lo) / max(hi - lo, np.finfo(np.float32).tiny)
        return out
    raise ValueError(f"image {path} has unsupported dtype {arr.dtype}")


def _to_hwc(arr: np.ndarray, path: Path) -> np.ndarray:
    if arr.ndim > 3:
        arr = arr.reshape([s for s in arr.shape if s != 1] or [1])
    if arr.ndim == 2:
        return arr[..., None]
    if arr.ndim == 3:
        if arr.shape[-1] <= 4:
            return arr
        if arr.shape[0] <= 4:  # channel-first TIFF
            return np.moveaxis(arr, 0, -1)
    raise ValueError(
        f"image {path} has shape {arr.shape}; expected a 2D image (H, W) or (H, W, C) "
        "with C <= 4 (stacks and volumes are not supported for training)"
    )


def load_image(path: str | Path, color: bool) -> np.ndarray:
    """Read one image as float32 (H, W, C) in [0, 1].

    Integer images are divided by their dtype's maximum (uint8 by 255, uint16 by 65535);
    float images in [0, 1] are kept as they are, others rescaled to it with a warning; CMYK
    JPEGs are converted to RGB. Alpha is dropped (RGBA -> RGB, gray+alpha -> gray);
    gray becomes color by repeating the channel, color becomes gray by luminance
    (``skimage.color.rgb2gray``).

    Parameters
    ----------
    path : str or Path
        A .png, .jpg, .jpeg, .tif, .tiff or .bmp file.
    color : bool
        True for 3 channels (RGB), False for 1 (gray).

    Returns
    -------
    ndarray
        float32 (H, W, 3) if ``color`` else (H, W, 1).
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image not found: {path}")
    try:
        raw = _read_raw(path)
    except Exception as err:  # noqa: BLE001  (any reader failure: name the file)
        raise ValueError(f"cannot read image {path}: {err}") from err
    img = _to_unit_float(_to_hwc(raw, path), path)
    c = img.shape[-1]
    if c == 2:  # gray + alpha
        img = img[..., :1]
    elif c == 4:  # RGBA
        img = img[..., :3]
    c = img.shape[-1]
    if color and c == 1:
        img = np.repeat(img, 3, axis=-1)
    elif not color and c == 3:
        from skimage.color import rgb2gray

        img = rgb2gray(img).astype(np.float32)[..., None]
    return np.ascontiguousarray(img, dtype=np.float32)


def split_train_val(
    images: list, val_fraction: float, max_val: int, seed: int
) -> tuple[list, list]:
    """Hold out a deterministic random share of ``images`` for validation.

    ``round(len * val_fraction)`` items, at least 1 when ``val_fraction > 0`` and at most
    ``max_val``, are held out, always leaving at least one training item (so a single
    image gives an empty validation list). Both lists keep the input order.

    Parameters
    ----------
    images : list
        Paths or arrays; returned as they are.
    val_fraction : float
        In [0, 1).
    max_val : int
        Upper bound on the validation items (>= 0).
    seed : int
        Non-negative seed of the permutation.

    Returns
    -------
    train, val : list
    """
    if not images:
        raise ValueError("no images to split")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1) (got {val_fraction})")
    if max_val < 0:
        raise ValueError(f"max_val must be >= 0 (got {max_val})")
    n = len(images)
    n_val = int(round(n * val_fraction))
    if val_fraction > 0:
        n_val = max(n_val, 1)
    n_val = min(n_val, max_val, n - 1)
    order = np.random.default_rng(check_seed(seed)).permutation(n)
    val_idx = set(order[:n_val].tolist())
    train = [im for i, im in enumerate(images) if i not in val_idx]
    val = [im for i, im in enumerate(images) if i in val_idx]
    return train, val


def check_images(images: Sequence[np.ndarray], name: str = "images") -> list[np.ndarray]:
    """float32 contiguous (H, W, C) images, all with one channel count; raise naming the bad one."""
    if len(images) == 0:
        raise ValueError(f"{name} is empty: need at least one image")
    out = []
    for i, im in enumerate(images):
        im = np.asarray(im)
        if im.ndim != 3:
            raise ValueError(f"{name}[{i}] must have shape (H, W, C), got shape {im.shape}")
        out.append(np.ascontiguousarray(im, dtype=np.float32))
    chans = {im.shape[-1] for im in out}
    if len(chans) > 1:
        raise ValueError(
            f"{name} mix channel counts {sorted(chans)}; load them all gray or all color"
        )
    return out


def fluorescence_like(
    clean: np.ndarray, config: FluorescenceConfig, rng: np.random.Generator
) -> np.ndarray:
    """A clean photo as a widefield microscope would image it: ``x**gamma`` through a Gaussian PSF.

    Why: fluorescence images are dark fields of sparse structures with no detail finer
    than the optics' point-spread function; photos teach neither. Gamma and PSF width
    are drawn uniformly from ``config``'s ranges; borders are mirrored. Stays in [0, 1].

    Parameters
    ----------
    clean : ndarray
        float (H, W, C) image in [0, 1]; not modified.
    config : FluorescenceConfig
    rng : numpy.random.Generator

    Returns
    -------
    ndarray
        float32 (H, W, C).
    """
    from scipy.ndimage import gaussian_filter

    gamma = float(rng.uniform(*config.gamma_range))
    width = float(rng.uniform(*config.psf_sigma_range))
    x = np.power(np.clip(np.asarray(clean, dtype=np.float32), 0.0, 1.0), np.float32(gamma))
    return gaussian_filter(x, sigma=(width, width, 0.0), mode="mirror").astype(np.float32)


class PatchSampler:
    """Random noisy/clean patch batches, each a pure function of (seed, step).

    An image is drawn with probability proportional to its area, then a random crop,
    then (with ``augment``) a random flip and 90-degree rotation, then the corruption.
    Images smaller than the patch are mirror-padded (``numpy.pad`` mode "reflect") up
    to the patch size once at construction, so every image can be used.

    Parameters
    ----------
    images : list of ndarray
        float (H, W, C) clean images in [0, 1], all with the same C.
    patch_size : int
        Side of the square patches.
    batch_size : int
    corruption : CorruptionConfig
    seed : int
        Non-negative.
    augment : bool
        Random flips and 90-degree rotations.
    fluorescence : FluorescenceConfig, optional
        With ``prob`` > 0, that share of clean patches is made fluorescence-like
        (:func:`fluorescence_like`) before the noise; the target is the transformed patch.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        patch_size: int,
        batch_size: int,
        corruption: CorruptionConfig,
        seed: int = 0,
        augment: bool = True,
        fluorescence: FluorescenceConfig | None = None,
    ) -> None:
        if patch_size < 1:
            raise ValueError(f"patch_size must be >= 1 (got {patch_size})")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1 (got {batch_size})")
        imgs = check_images(images)
        areas = np.array([im.shape[0] * im.shape[1] for im in imgs], dtype=np.float64)
        self.images = [self._pad(im, patch_size) for im in imgs]
        self.weights = areas / areas.sum()
        self.patch_size = int(patch_size)
        self.batch_size = int(batch_size)
        self.corruption = corruption
        self.seed = check_seed(seed)
        self.augment = bool(augment)
        self.fluorescence = fluorescence if fluorescence is not None else FluorescenceConfig()
        self.channels = imgs[0].shape[-1]

    @staticmethod
    def _pad(im: np.ndarray, p: int) -> np.ndarray:
        ph, pw = max(0, p - im.shape[0]), max(0, p - im.shape[1])
        if not (ph or pw):
            return im
        return np.pad(
            im, ((ph // 2, ph - ph // 2), (pw // 2, pw - pw // 2), (0, 0)), mode="reflect"
        )

    def clean_patches(self, step: int) -> np.ndarray:
        """The clean (target) patches of batch ``step``: float32 (B, P, P, C)."""
        step = check_seed(step, "step")
        rng = np.random.default_rng([self.seed, step, _PATCH_STREAM])
        p, b = self.patch_size, self.batch_size
        which = rng.choice(len(self.images), size=b, p=self.weights)
        out = np.empty((b, p, p, self.channels), dtype=np.float32)
        for i, k in enumerate(which):
            im = self.images[k]
            y = int(rng.integers(0, im.shape[0] - p + 1))
            x = int(rng.integers(0, im.shape[1] - p + 1))
            patch = im[y : y + p, x : x + p]
            if self.augment:
                if rng.random() < 0.5:
                    patch = patch[:, ::-1]
                patch = np.rot90(patch, int(rng.integers(4)), axes=(0, 1))
            out[i] = patch
        if self.fluorescence.prob > 0:  # its own stream: recipes without it keep their batches
            for i in range(b):
                f_rng = np.random.default_rng([self.seed, step, _FLUORESCENCE_STREAM, i])
                if f_rng.random() < self.fluorescence.prob:
                    out[i] = fluorescence_like(out[i], self.fluorescence, f_rng)
        return out

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch number ``step`` (>= 0).

        Returns
        -------
        noisy, clean : ndarray
            float32 (B, P, P, C): the corrupted input and its clean target.
        """
        clean = self.clean_patches(step)
        noisy = np.empty_like(clean)
        for i in range(clean.shape[0]):
            rng = np.random.default_rng([self.seed, step, _NOISE_STREAM, i])
            noisy[i], _ = corrupt(clean[i], self.corruption, rng)
        return noisy, clean

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(step)


class PairSampler:
    """Random (noisy, clean) patch batches from registered pairs, a pure function of (seed, step).

    Why: with real noisy/clean acquisitions the noise is the data's own; both images
    get exactly the same crop, flip and rotation (the pair is cut as one image with
    twice the channels by a :class:`PatchSampler`), and nothing is added.

    Parameters
    ----------
    noisy, clean : list of ndarray
        float (H, W, C) images, pairwise of equal shape.
    patch_size, batch_size, seed, augment
        As for :class:`PatchSampler`.
    """

    def __init__(
        self,
        noisy: list[np.ndarray],
        clean: list[np.ndarray],
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
    ) -> None:
        noisy = check_images(noisy, "noisy")
        clean = check_images(clean, "clean")
        if len(noisy) != len(clean):
            raise ValueError(f"{len(noisy)} noisy images but {len(clean)} clean ones: give pairs")
        for i, (n, c) in enumerate(zip(noisy, clean, strict=True)):
            if n.shape != c.shape:
                raise ValueError(
                    f"pair {i}: noisy shape {n.shape} differs from clean shape {c.shape}"
                )
        self.channels = noisy[0].shape[-1]
        joined = [np.concatenate([n, c], axis=-1) for n, c in zip(noisy, clean, strict=True)]
        self._sampler = PatchSampler(
            joined, patch_size, batch_size, CorruptionConfig(), seed=seed, augment=augment
        )

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step``: noisy input and clean target patches, float32 (B, P, P, C)."""
        both = self._sampler.clean_patches(step)
        return (
            np.ascontiguousarray(both[..., : self.channels]),
            np.ascontiguousarray(both[..., self.channels :]),
        )

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(step)


def _centre_crop(im: np.ndarray, crop: int | None, multiple: int) -> np.ndarray:
    h, w = im.shape[:2]
    th, tw = (h, w) if crop is None else (min(h, crop), min(w, crop))
    th, tw = th - th % multiple, tw - tw % multiple
    if th < 1 or tw < 1:
        raise ValueError(
            f"image of size {h}x{w} is smaller than multiple={multiple}; cannot crop it"
        )
    y, x = (h - th) // 2, (w - tw) // 2
    return np.ascontiguousarray(im[y : y + th, x : x + tw])


def validation_set(
    images: list[np.ndarray],
    sigmas: Sequence[float],
    seed: int,
    crop: int | None = 256,
    multiple: int = 1,
) -> list[tuple[np.ndarray, np.ndarray, float]]:
    """Fixed noisy/clean pairs for validation: every image at every sigma.

    Why fixed: the same noise at every validation makes PSNR curves comparable.

    Parameters
    ----------
    images : list of ndarray
        float (H, W, C) clean images in [0, 1].
    sigmas : sequence of float
        Gaussian noise sigmas on the 8-bit scale.
    seed : int
        Non-negative; pair (image j, sigma k) uses ``default_rng([seed, 3, j, k])``.
    crop : int or None
        Centre-crop each image to at most ``crop x crop`` (None: whole image).
    multiple : int
        Also crop height and width down to multiples of this (a model's size multiple).

    Returns
    -------
    list of (noisy, clean, sigma)
        Image-major order: all sigmas of image 0, then of image 1, ...; noisy is not clipped.
        Empty when ``images`` is empty (e.g. a single training image left nothing to hold out).
    """
    imgs = check_images(images) if len(images) else []
    seed = check_seed(seed)
    if crop is not None and crop < 1:
        raise ValueError(f"crop must be >= 1 or None (got {crop})")
    if multiple < 1:
        raise ValueError(f"multiple must be >= 1 (got {multiple})")
    out = []
    for j, im in enumerate(imgs):
        clean = _centre_crop(im, crop, multiple)
        for k, s in enumerate(sigmas):
            rng = np.random.default_rng([seed, _VAL_STREAM, j, k])
            out.append((add_gaussian(clean, float(s), rng), clean, float(s)))
    return out


def photon_validation_set(
    images: list[np.ndarray],
    photons: Sequence[float],
    seed: int,
    crop: int | None = 256,
    fluorescence: FluorescenceConfig | None = None,
) -> list[tuple[np.ndarray, np.ndarray, str]]:
    """Fixed Poisson-noise validation pairs: every image at every photon level.

    Why: a microscopy model is chosen on the noise it is for (shot noise at a few
    photons), not only on Gaussian sigmas. With ``fluorescence`` (``prob`` > 0) every
    clean image is first made fluorescence-like with one fixed draw per image.

    Parameters
    ----------
    images : list of ndarray
        float (H, W, C) clean images in [0, 1].
    photons : sequence of float
        Expected photons at signal 1.0 (> 0); no read noise.
    seed : int
        Non-negative; image j at level k uses ``default_rng([seed, 3, j, 4, k + 1])``.
    crop : int or None
        Centre-crop each image to at most ``crop x crop`` (None: whole image).
    fluorescence : FluorescenceConfig, optional

    Returns
    -------
    list of (noisy, clean, label)
        Image-major order; ``label`` is ``"<photons>ph"`` (e.g. ``"10ph"``).
    """
    imgs = check_images(images) if len(images) else []
    seed = check_seed(seed)
    out = []
    for j, im in enumerate(imgs):
        clean = _centre_crop(im, crop, 1)
        if fluorescence is not None and fluorescence.prob > 0:
            rng = np.random.default_rng([seed, _VAL_STREAM, j, _FLUORESCENCE_STREAM])
            clean = fluorescence_like(clean, fluorescence, rng)
        for k, p in enumerate(photons):
            rng = np.random.default_rng([seed, _VAL_STREAM, j, _FLUORESCENCE_STREAM, k + 1])
            out.append((poisson_gaussian(clean, float(p), 0.0, rng), clean, f"{p:g}ph"))
    return out


def psnr(
    clean: np.ndarray, estimate: np.ndarray, peak: float = 1.0, max_db: float | None = None
) -> float:
    """Peak signal-to-noise ratio in dB, ``10 log10(peak^2 / mse)``.

    The estimate is clipped to [0, peak] first, as when it is displayed or saved;
    identical images give ``inf``, or ``max_db`` when given (model cards store
    validation scores as JSON, which has no infinity).

    Parameters
    ----------
    clean, estimate : ndarray
        Same shape.
    peak : float
        The maximum signal value (1.0 for [0, 1] images).
    max_db : float, optional
        Upper bound of the result.

    Returns
    -------
    float
    """
    clean = np.asarray(clean, dtype=np.float64)
    estimate = np.asarray(estimate, dtype=np.float64)
    if clean.shape != estimate.shape:
        raise ValueError(f"shapes differ: clean {clean.shape} vs estimate {estimate.shape}")
    if peak <= 0:
        raise ValueError(f"peak must be > 0 (got {peak})")
    mse = float(np.mean((clean - np.clip(estimate, 0.0, peak)) ** 2))
    db = float(10.0 * np.log10(peak**2 / mse)) if mse > 0.0 else float("inf")
    return db if max_db is None else min(db, float(max_db))
