"""One self-describing file per model: a Keras 3 ``.keras`` zip with the model card inside.

Why one file: a model copied or mailed alone still says what it is, how it was
trained and how far tiles must overlap. Writes are atomic (write, then rename),
so a run killed mid-save never leaves a broken model where a good one was.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from pathlib import Path

import keras
from pydantic import ValidationError

from . import layers as _layers  # noqa: F401  (registers the custom layers for loading)
from .config import ModelCard, format_validation_error

__all__ = ["ModelFileError", "copy_with_card", "load_keras_model", "read_card", "save_model"]

CARD_ENTRY = "bfcnn_card.json"


class ModelFileError(OSError):
    """A model file is missing, unreadable or not a napari-bfcnn model; names path and reason."""


def save_model(
    model: keras.Model, path: str | Path, card: ModelCard, include_optimizer: bool = False
) -> Path:
    """Save a model and its card atomically to ``path`` (``.keras``).

    Parameters
    ----------
    model : keras.Model
    path : str or Path
        Target file; its folder is created if needed.
    card : ModelCard
    include_optimizer : bool
        Keep the optimizer state (checkpoints that training resumes from).
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"model files end in .keras (got {path.name})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix=f".{path.stem}.", dir=path.parent)
    os.close(fd)
    try:
        model.save(tmp, include_optimizer=include_optimizer)
        with zipfile.ZipFile(tmp, "a") as zf:
            zf.writestr(CARD_ENTRY, card.model_dump_json(indent=2))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; model files are meant to be shared
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def copy_with_card(src: str | Path, dst: str | Path, card: ModelCard) -> Path:
    """Copy a model file to ``dst`` with a new card, atomically, without loading the weights.

    Why: publishing a trained model (new name, notes) must not cost a Keras load and save,
    and must never leave a half-written file where a good model was.

    Parameters
    ----------
    src, dst : str or Path
        A readable model file and the target (``.keras``; may be the same file).
    card : ModelCard
    """
    src, dst = Path(src), Path(dst)
    if dst.suffix != ".keras":
        raise ValueError(f"model files end in .keras (got {dst.name})")
    read_card(src)  # a clear error for a missing or foreign file
    dst.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".keras", prefix=f".{dst.stem}.", dir=dst.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as zout:
            for item in zin.infolist():
                if item.filename != CARD_ENTRY:
                    zout.writestr(item, zin.read(item.filename))
            zout.writestr(CARD_ENTRY, card.model_dump_json(indent=2))
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return dst


def read_card(path: str | Path) -> ModelCard:
    """Read the model card stored in a ``.keras`` file without loading the weights."""
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(f"model file not found: {path}")
    try:
        with zipfile.ZipFile(path) as zf:
            raw = zf.read(CARD_ENTRY)
    except zipfile.BadZipFile:
        raise ModelFileError(f"{path} is not a .keras model file (not a zip archive)") from None
    except KeyError:
        raise ModelFileError(
            f"{path} has no model card ({CARD_ENTRY}): not a napari-bfcnn model"
        ) from None
    try:
        return ModelCard.model_validate(json.loads(raw))
    except (json.JSONDecodeError, ValidationError) as err:
        msg = (
            format_validation_error(err, "model card") if isinstance(err, ValidationError) else err
        )
        raise ModelFileError(f"{path}: unreadable model card: {msg}") from None


def load_keras_model(path: str | Path, compile: bool = False) -> tuple[keras.Model, ModelCard]:
    """Load a model file and its card; any failure raises :class:`ModelFileError` with the path."""
    card = read_card(path)
    try:
        model = keras.saving.load_model(str(path), compile=compile, safe_mode=True)
    except Exception as err:  # keras raises many kinds; the user needs path + reason
        raise ModelFileError(f"could not load model {path}: {type(err).__name__}: {err}") from None
    return model, card
