"""Find, load and manage models: bundled ones and the user's own.

Why: the plugin lists models by name without loading weights (cards only), loads
the chosen one once (cached), and lets users rename or delete the models they
trained, never the bundled ones. A file whose card cannot be read is listed with
the reason, so a broken download is visible instead of silently missing.

Bundled models live in ``src_models/pretrained/*.keras``; user models in
``platformdirs.user_data_dir("napari-bfcnn")/models`` or the folder named by the
environment variable ``NAPARI_BFCNN_MODEL_DIR``. A model's name is its file stem.
"""

from __future__ import annotations

import functools
import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .inference import Denoiser

__all__ = [
    "BUNDLED_DIR",
    "BLACK_LEVEL_NOTE",
    "ENV_MODEL_DIR",
    "ModelInfo",
    "MICROSCOPY_CORRELATED_MODEL",
    "MICROSCOPY_MODEL",
    "default_model",
    "delete_user_model",
    "default_offset",
    "finetuned_black_level",
    "is_camera_data",
    "looks_like_fluorescence_composite",
    "list_models",
    "load_model",
    "rename_user_model",
    "user_model_dir",
]

BUNDLED_DIR = Path(__file__).parent / "pretrained"
MICROSCOPY_MODEL = "microscopy"  # the bundled model trained on Poisson-Gaussian (camera) noise
# ... and the one also trained on noise correlated between neighbouring pixels
MICROSCOPY_CORRELATED_MODEL = "microscopy-correlated"
ENV_MODEL_DIR = "NAPARI_BFCNN_MODEL_DIR"
# card note of a fine-tuned model: the black level its training planes had removed, as
# FinetuneSettings.black_level ("camera", "auto", "none" or a number)
BLACK_LEVEL_NOTE = "black_level_setting"
# a letter, digit or "_" first: never "." or ".." (paths) nor a hidden file the list skips
_NAME = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.\-]*$")


@dataclass(frozen=True)
class ModelInfo:
    """What the model list shows about one model file, read from its card only."""

    name: str
    path: Path
    channels: int = 0
    kind: str = ""
    parameters: int = 0
    receptive_field: int = 0
    size_multiple: int = 1
    sigma_range: tuple[float, float] = (0.0, 0.0)
    black_level: str = ""  # fine-tuned models: BLACK_LEVEL_NOTE ("" when not recorded)
    description: str = ""
    builtin: bool = False
    error: str | None = None


def user_model_dir() -> Path:
    """Folder of the user's models: ``$NAPARI_BFCNN_MODEL_DIR`` or the platform data folder."""
    env = os.environ.get(ENV_MODEL_DIR)
    if env:
        return Path(env).expanduser()
    import platformdirs

    return Path(platformdirs.user_data_dir("napari-bfcnn")) / "models"


def _info(path: Path, builtin: bool) -> ModelInfo:
    from .modelfile import ModelFileError, read_card

    try:
        card = read_card(path)
    except ModelFileError as err:
        return ModelInfo(name=path.stem, path=path, builtin=builtin, error=str(err))
    return ModelInfo(
        name=path.stem,
        path=path,
        channels=card.channels,
        kind=card.kind,
        parameters=card.parameters,
        receptive_field=card.receptive_field,
        size_multiple=card.size_multiple,
        sigma_range=tuple(card.sigma_range),
        black_level=recorded_black_level(card.notes),
        description=card.description,
        builtin=builtin,
    )


def _files(folder: Path) -> list[Path]:
    if not folder.is_dir():
        return []
    return sorted(
        (p for p in folder.glob("*.keras") if not p.name.startswith(".")), key=lambda p: p.stem
    )


def _bundled_names() -> set[str]:
    return {p.stem for p in _files(BUNDLED_DIR)}


def list_models() -> list[ModelInfo]:
    """List bundled then user models, each sorted by name; reads cards only (fast).

    A user model named like a bundled one is listed with an error, since a name
    must mean one model.
    """
    bundled = [_info(p, True) for p in _files(BUNDLED_DIR)]
    taken = {m.name for m in bundled}
    users = []
    for p in _files(user_model_dir()):
        info = _info(p, False)
        if info.name in taken:
            info = ModelInfo(
                name=info.name,
                path=p,
                builtin=False,
                error=f"{p} has the same name as a bundled model; rename the file to use it",
            )
        users.append(info)
    return bundled + users


def _available(models: list[ModelInfo]) -> str:
    names = [m.name for m in models if m.error is None]
    return ", ".join(names) if names else "none installed"


def _resolve(name_or_path: str | Path) -> Path:
    from .modelfile import ModelFileError

    text = str(name_or_path)
    is_path = (
        isinstance(name_or_path, Path) or text.endswith(".keras") or os.sep in text or "/" in text
    )
    if is_path:
        path = Path(text).expanduser()
        if not path.is_file():
            raise ModelFileError(f"model file not found: {path}")
        return path.resolve()
    models = list_models()
    for m in models:
        if m.name == text:
            if m.error is not None:
                raise ModelFileError(m.error)
            return m.path.resolve()
    raise ValueError(f"unknown model {text!r}; available models: {_available(models)}")


def finetuned_black_level(model: str | Path | ModelInfo) -> str | float | None:
    """The black level a fine-tuned model was trained with, as the engine's ``offset``.

    Why: a model fine-tuned on planes with their black level removed (or kept) must be
    denoised the same way; the Denoise widget, the command line and the function
    follow it when not told otherwise. Returns ``"auto"``, a number, None (none
    removed), or ``"camera"`` where the model records nothing or the default rule
    (camera data only: follow the data, as for any model).
    """
    from .modelfile import ModelFileError, read_card

    if isinstance(model, ModelInfo):
        text = model.black_level
    else:
        try:
            notes = read_card(_resolve(model)).notes
        except (ValueError, ModelFileError):  # reported where the model is loaded
            return "camera"
        text = recorded_black_level(notes)
    if text in ("", "camera"):
        return "camera"
    if text == "auto":
        return "auto"
    if text == "none":
        return None
    try:
        return float(text)
    except ValueError:
        return "camera"


def recorded_black_level(notes: dict[str, str]) -> str:
    """A card's fine-tuning black level setting as text ("" when none is recorded):
    :data:`BLACK_LEVEL_NOTE`, else what an older card's text says."""
    return str(notes.get(BLACK_LEVEL_NOTE, "")) or _legacy_black_level(notes)


def _legacy_black_level(notes: dict[str, str]) -> str:
    """The setting of a model fine-tuned before BLACK_LEVEL_NOTE, from its card's text.

    Fine-tuned before any black level was recorded (a ``mode`` note but no
    ``black_level``): its planes kept theirs, so "none".
    """
    if "mode" in notes and "black_level" not in notes:
        return "none"
    text = str(notes.get("black_level", ""))
    if text.startswith("estimated per plane (auto)"):
        return "auto"
    if text.startswith("none"):
        return "none"
    try:
        return f"{float(text):g}"
    except ValueError:
        return ""  # "estimated per plane for camera data ...", or nothing: the default rule


def default_offset(model: str | Path | ModelInfo | None, dtype: Any, rgb: bool):
    """The black level denoising uses unless told otherwise, as the engine's ``offset``.

    Why one rule for the widgets, the command line and the function: the model's own
    (:func:`finetuned_black_level`), else ``"auto"`` for camera data (their offset must
    go: the network is scale-, not shift-equivariant), else None.
    """
    recorded = finetuned_black_level(model) if model is not None else "camera"
    if recorded != "camera":
        return recorded
    return "auto" if is_camera_data(dtype, rgb) else None


def load_model(name_or_path: str | Path) -> Denoiser:
    """Load a model by name or path, cached until its file changes.

    Parameters
    ----------
    name_or_path : str or Path
        A listed model name, or a path to a ``.keras`` model file.

    Returns
    -------
    Denoiser

    Raises
    ------
    ValueError
        Unknown name; the message lists the available names.
    ModelFileError
        The file is missing or cannot be read; names the path and the reason.
    """
    path = _resolve(name_or_path)
    stat = path.stat()
    with _LOAD_LOCK:  # threads that miss the cache together must not each load a copy
        return _load_cached(str(path), stat.st_mtime_ns, stat.st_size)


# dask's threaded scheduler and the plugin's workers call load_model from several threads
_LOAD_LOCK = threading.Lock()


@functools.lru_cache(maxsize=8)
def _load_cached(path: str, mtime_ns: int, size: int) -> Denoiser:
    from .inference import Denoiser
    from .modelfile import load_keras_model

    model, card = load_keras_model(path)
    return Denoiser(model, card, name=Path(path).stem)


def clear_cache() -> None:
    """Forget loaded models (after files were replaced or to free memory)."""
    _load_cached.cache_clear()


def is_camera_data(dtype, rgb: bool = False) -> bool:
    """Whether data of this dtype look like camera counts rather than a photo.

    Why this rule: scientific cameras give 12- to 16-bit integers, one channel per
    fluorophore; 8-bit and float data and RGB images are mostly photos or processed.
    The plugin's proposal and the command line's default both follow it.
    """
    import numpy as np

    dt = np.dtype(dtype)
    return not rgb and dt.kind in "iu" and dt.itemsize >= 2


def looks_like_fluorescence_composite(rgb, dark_fraction: float = 0.15) -> bool:
    """Whether an RGB image looks like a composite of fluorescence channels, not a photo.

    Why: such composites (dark ground, each fluorophore in its own colour) are better
    denoised channel by channel with the microscopy model than by the photo colour
    model; the plugin then says so, without changing the choice. The rule: at least
    half the pixels are darker, in their brightest channel, than ``dark_fraction`` of
    the image's bright end (99.5th percentile). Photos rarely are; night shots may be,
    and for those the hint is harmless.

    Parameters
    ----------
    rgb : array-like, (..., H, W, 3)
        An RGB image or stack (the first plane is looked at; lazy arrays are read
        only there, at most 256 px a side); any dtype.
    dark_fraction : float
        How dark "dark" is, as a fraction of the bright end.
    """
    import numpy as np

    shape = tuple(getattr(rgb, "shape", np.shape(rgb)))
    if len(shape) < 3 or shape[-1] != 3 or 0 in shape:
        return False
    step = max(1, max(shape[-3:-1]) // 256)  # a 256-px view is plenty for percentiles
    # index before converting: a lazy (dask, zarr) layer reads only this view
    view = rgb[(0,) * (len(shape) - 3) + (slice(None, None, step), slice(None, None, step))]
    peak = np.asarray(view, dtype=np.float64).max(axis=-1)
    peak = peak[np.isfinite(peak)]
    if peak.size == 0:
        return False
    low, bright = np.percentile(peak, [0.5, 99.5])
    if not bright > low:  # flat image
        return False
    return bool(np.median(peak) - low < dark_fraction * (bright - low))


def default_model(channels: int, rgb: bool, dtype=None, noise=None) -> str:
    """Name of the model to offer first for an image.

    ``"color"`` for RGB images; ``"microscopy"`` for camera data (see
    :func:`is_camera_data`, when ``dtype`` is given), ``"microscopy-correlated"``
    when ``noise`` says neighbouring pixels' noise is correlated; else ``"gray"``.
    If that one is not installed (or broken): the next of those for camera data,
    then the first
    working model with the wanted channel count (3 for RGB, else 1), else the
    first working model of any channel count (any model denoises any image,
    channel by channel if needed).

    Parameters
    ----------
    channels : int
        Channels of the image (used for the message only).
    rgb : bool
        Whether the channels are RGB colours.
    dtype : numpy dtype, optional
        The data's dtype; 12/16-bit integers get the microscopy model.
    noise : PoissonGaussian, optional
        The data's noise (:func:`src_models.noise_model.estimate_centre_crop`).
    """
    if rgb:
        wanted, want_channels = ["color"], 3
    elif dtype is not None and is_camera_data(dtype):
        wanted, want_channels = [MICROSCOPY_MODEL, "gray"], 1
        if noise is not None and getattr(noise, "correlated", False):
            wanted.insert(0, MICROSCOPY_CORRELATED_MODEL)
    else:
        wanted, want_channels = ["gray"], 1
    models = [m for m in list_models() if m.error is None]
    names = {m.name for m in models}
    for name in wanted:
        if name in names:
            return name
    for m in models:
        if m.channels == want_channels:
            return m.name
    if models:
        return models[0].name
    raise ValueError(
        f"no usable denoising model for a {channels}-channel {'RGB ' if rgb else ''}image: "
        f"no models are installed in {BUNDLED_DIR} or {user_model_dir()}" + _broken_note()
    )


def _broken_note() -> str:
    broken = [m for m in list_models() if m.error is not None]
    if not broken:
        return ""
    return " (unreadable: " + "; ".join(m.error for m in broken) + ")"


def _check_name(name: str, what: str) -> None:
    if (
        not isinstance(name, str)
        or not _NAME.match(name)
        or len(name) > 64
        or name.lower().endswith(".keras")  # would be read as a file path, not a name
    ):
        raise ValueError(
            f"{what} {name!r} is not a valid model name: use 1-64 letters, digits, '_', '.' "
            "or '-', starting with a letter, digit or '_', and not ending in '.keras'"
        )


def _existing_user_file(name: str) -> Path:
    """The user's file for ``name``; bundled or unknown names are refused with a clear error."""
    _check_name(name, "model")
    path = user_model_dir() / f"{name}.keras"
    if path.is_file():
        return path
    if name in _bundled_names():
        raise ValueError(
            f"{name!r} is a bundled model; bundled models cannot be renamed or deleted"
        )
    raise ValueError(f"no user model named {name!r} in {user_model_dir()}")


def rename_user_model(old: str, new: str) -> Path:
    """Rename a user model (its file and the name in its card); bundled models are refused.

    Returns
    -------
    Path
        The new file.
    """
    src = _existing_user_file(old)
    _check_name(new, "new name")
    if new in _bundled_names():
        raise ValueError(f"{new!r} is the name of a bundled model; choose another name")
    dst = src.with_name(f"{new}.keras")
    if new == old:
        return src
    if dst.exists():
        raise ValueError(f"a user model named {new!r} already exists: {dst}")
    os.replace(src, dst)
    _set_card_name(dst, new)
    clear_cache()
    return dst


def delete_user_model(name: str) -> None:
    """Delete a user model file; bundled models are refused."""
    _existing_user_file(name).unlink()
    clear_cache()


def _set_card_name(path: Path, name: str) -> None:
    """Rewrite the card inside a model file with a new name (atomic; skipped if unreadable)."""
    from .modelfile import ModelFileError, copy_with_card, read_card

    try:
        card = read_card(path)
    except ModelFileError:
        return  # a broken file is renamed as is; its error stays visible in the list
    card.name = name
    copy_with_card(path, path, card)
