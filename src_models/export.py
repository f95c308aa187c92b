"""Export a model to TensorFlow SavedModel, TFLite and a bioimage.io package, each checked.

Why checked: an export that loads but computes something else is worse than
none. Every file written is reloaded (SavedModel by TensorFlow, ``.tflite`` by
the TFLite interpreter, the package by ``bioimageio.spec``) and run on a noisy
test image scaled to [0, 1]; it must match the Keras model to ``TOLERANCE``.

The shell command is ``napari-bfcnn export MODEL --to saved_model,tflite,bioimageio
--out DIR``; the napari plugin's Export widget calls :func:`iter_export`.
Formats and endpoints are described in :mod:`export_tf` and
:mod:`export_bioimageio`.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .export_bioimageio import PackageInfo, halo_and_min_size
from .export_tf import ExportError
from .inference import _round_up

if TYPE_CHECKING:
    from .inference import Denoiser

__all__ = [
    "FORMATS",
    "TOLERANCE",
    "ExportError",
    "ExportResult",
    "add_export_parser",
    "export_model",
    "iter_export",
    "output_path",
    "parse_formats",
    "run_export",
    "test_image",
]

FORMATS = ("saved_model", "tflite", "bioimageio")
TOLERANCE = 1e-4  # max |export - keras| on an image in [0, 1]
_SUFFIX = {"saved_model": "_saved_model", "tflite": ".tflite", "bioimageio": ".bioimageio.zip"}


@dataclass(frozen=True)
class ExportResult:
    """One written export: its format, where it is, and how far it is from the Keras model."""

    format: str
    path: Path
    max_error: float
    seconds: float


def parse_formats(text: str | Sequence[str]) -> list[str]:
    """``"saved_model,tflite"`` (or a list) -> known format names, in :data:`FORMATS` order.

    Why that order: the package's documentation then reports the other formats' checks too.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = [s.strip().lower().replace("-", "_") for s in items if s.strip()]
    aliases = {"savedmodel": "saved_model", "bioimage.io": "bioimageio", "bioimage": "bioimageio"}
    names = [aliases.get(n, n) for n in names]
    bad = [n for n in names if n not in FORMATS]
    if bad or not names:
        raise ValueError(
            f"unknown export format(s) {', '.join(bad) or '(none given)'}; "
            f"choose from {', '.join(FORMATS)}"
        )
    return [f for f in FORMATS if f in names]


def output_path(out: str | Path, name: str, fmt: str) -> Path:
    """Where format ``fmt`` of model ``name`` goes inside ``out``."""
    return Path(out) / f"{name}{_SUFFIX[fmt]}"


def test_image(channels: int, side: int, sigma: float = 25.0, seed: int = 0) -> np.ndarray:
    """A noisy ``[1, side, side, channels]`` float32 image >= 0 from scikit-image's samples.

    Why a real image: random noise alone would leave most of a trained network's
    filters near zero; camera (gray) and astronaut (colour) exercise them. More
    than 3 channels repeat the colour channels; 2 channels are red and green. Why
    clipped at 0: data without a black level reach the network from napari-bfcnn
    with their zero as is, or a negative minimum subtracted, so never below 0; the
    package's test tensors show what it does there (after a camera's black level is
    removed, the noise of the background does dip below 0).
    """
    from skimage import data

    if channels == 1:
        clean = data.camera()[..., None]
    else:
        rgb = data.astronaut()
        clean = rgb[..., [i % 3 for i in range(channels)]]
    clean = clean.astype(np.float32) / 255.0
    h, w = clean.shape[:2]
    if side > min(h, w):
        reps = -(-side // min(h, w))
        clean = np.pad(clean, ((0, reps * h - h), (0, reps * w - w), (0, 0)), mode="symmetric")
        h, w = clean.shape[:2]
    top, left = (h - side) // 2, (w - side) // 2
    clean = clean[top : top + side, left : left + side]
    rng = np.random.default_rng(seed)
    noisy = clean + rng.normal(0.0, sigma / 255.0, clean.shape).astype(np.float32)
    return np.maximum(noisy, 0.0)[None].astype(np.float32)


def _numpy(x) -> np.ndarray:
    import keras

    return np.asarray(keras.ops.convert_to_numpy(x))


def _model_file(name_or_path: str | Path) -> Path:
    from .registry import _resolve

    return _resolve(name_or_path)


def _documentation(den: Denoiser, model_file: Path, errors: dict[str, float], side: int) -> str:
    """The model card as markdown (the bundled page if there is one) plus usage and validation."""
    from .bench_docs import card_markdown

    card = den.card
    page = model_file.with_suffix(".md")
    if page.is_file():
        text = page.read_text(encoding="utf-8").rstrip()
    else:
        text = card_markdown(card, [], {}, name=den.name).split("\n## Benchmark")[0].rstrip()
    halo, min_size = halo_and_min_size(card)
    m = card.size_multiple
    val = card.validation_text()
    checks = ", ".join(f"{fmt} {err:.1e}" for fmt, err in errors.items())
    usage = f"""

## Using the exported model

Input `noisy`: float32 `[batch, y, x, channel]`, {card.channels} channel(s), finite, with zero
meaning no signal (values at or above 0, but for the noise of a background whose black level was
removed), in any intensity scale: the network is bias-free, hence positively homogeneous
(`D(a·y) = a·D(y)`), so raw 8-bit, 16-bit or float data go in as they are. It is not
offset-equivariant: {_black_level_advice(card)} Height and width must be multiples of {m}; for
tiles of at least {min_size} pixels, cut them overlapping by twice the halo of {halo} pixels
(receptive field ±{card.receptive_field} px) and keep each tile's centre, without its halo.
napari-bfcnn pads every plane by mirror reflection (the halo wide) before the network and crops
after; the network itself pads with zeros, so without that padding the output differs within the
halo of the image's border. Output `denoised`: same shape and units.

The TensorFlow SavedModel (`tf_saved_model.zip`) has the float32 endpoint `serve` (signature
`serving_default`) and a uint8 endpoint (`model(images)`, signature `serve_uint8`) that takes
uint8 images of any size above {m} pixels per side (reflect-padded to a multiple of {m} inside)
and returns them rounded and clipped to 0–255.

Made by napari-bfcnn (`napari-bfcnn export`); the package's own code is not needed to run it.

## Validation

Validation PSNR during training (held-out images): {val or "not recorded"}. The test tensors are a
noisy (σ = 25/255, clipped at 0) {side}×{side} crop of a scikit-image sample scaled to [0, 1] and
the Keras model's output on it; largest difference of the exported files from the Keras model on it:
{checks or "not checked"}.
"""
    return text + usage


def _black_level_advice(card) -> str:
    """What to subtract before the network and add back after, for this model."""
    from .registry import recorded_black_level

    setting = recorded_black_level(card.notes)
    if setting == "auto":
        return (
            "this model was fine-tuned with each plane's black level removed, estimated as "
            "napari-bfcnn does (the 0.5th percentile of the plane after a 1-px Gaussian "
            "blur): subtract it before the network and add it back to the output."
        )
    if setting == "none":
        return (
            "this model was fine-tuned on data with no black level removed: give it the data "
            "as they are (a negative minimum subtracted first and added back after)."
        )
    if setting not in ("", "camera"):
        return (
            f"this model was fine-tuned on data with a black level of {setting} (in the "
            "units of its training data) removed: subtract it before the network and add "
            "it back to the output."
        )
    return (
        "subtract a camera's black level (12/16-bit camera data: e.g. the dark background's "
        "level) or a negative minimum first, and add it back to the output; napari-bfcnn "
        "does so per plane for camera data."
    )


def _cover(den: Denoiser, channels: int, multiple: int, min_size: int) -> np.ndarray:
    """noisy | denoised side by side as uint8 RGB (2:1, as bio.image.io shows covers)."""
    side = _round_up(max(256, min_size), multiple)
    noisy = test_image(channels, side, seed=1)
    den_out = _numpy(den.model(noisy, training=False))
    pair = np.concatenate([noisy[0], den_out[0]], axis=1)
    if channels == 1 or channels == 2:
        pair = np.repeat(pair[..., :1], 3, axis=-1)
    else:
        pair = pair[..., :3]
    return (np.clip(pair, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _max_error(a: np.ndarray, b: np.ndarray, what: str) -> float:
    if a.shape != b.shape:
        raise ExportError(f"{what}: output shape {a.shape}, the Keras model's {b.shape}")
    err = float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
    if not np.isfinite(err) or err > TOLERANCE:
        raise ExportError(
            f"{what} differs from the Keras model by {err:.3g} on the test image "
            f"(tolerance {TOLERANCE:g})"
        )
    return err


def _replace(tmp: Path, target: Path) -> None:
    if target.is_dir() and not target.is_symlink():
        shutil.rmtree(target)
    elif target.exists():
        target.unlink()
    os.replace(tmp, target)


def iter_export(
    model: str | Path,
    formats: str | Sequence[str],
    out: str | Path,
    *,
    overwrite: bool = False,
    tflite_size: int | None = None,
    info: PackageInfo | None = None,
) -> Iterator[ExportResult]:
    """Export one model to each format in turn, yielding a checked :class:`ExportResult` each.

    Parameters
    ----------
    model : str or Path
        A model name (see ``napari-bfcnn models``) or a ``.keras`` path.
    formats : str or sequence of str
        Any of ``saved_model``, ``tflite``, ``bioimageio`` (comma-separated or a list).
    out : str or Path
        Output folder (created). Files: ``NAME_saved_model/``, ``NAME.tflite``,
        ``NAME.bioimageio.zip``.
    overwrite : bool
        Replace existing outputs; otherwise an existing one is an error, before any work.
    tflite_size : int, optional
        Fixed ``[1, size, size, C]`` TFLite input; default: free batch, height and width.
    info : PackageInfo, optional
        Authors, license and tags of the bioimage.io package.

    Raises
    ------
    ExportError
        A conversion failed, or an exported file does not match the Keras model.
    ValueError, ModelFileError
        Unknown format or model, an existing output without ``overwrite``, or a
        license or author that bioimage.io refuses; all raised before any work.
    """
    from .export_tf import exact_float32, require_tensorflow
    from .registry import load_model

    fmts = parse_formats(formats)
    if "bioimageio" in fmts:
        (info or PackageInfo()).check()
    model_file = _model_file(model)
    if "bioimageio" in fmts and (info or PackageInfo()).authors == PackageInfo().authors:
        from .registry import BUNDLED_DIR

        if BUNDLED_DIR.resolve() not in model_file.resolve().parents:
            raise ValueError(
                f"'{model_file.stem}' is your model, not one napari-bfcnn ships: give its "
                "authors for the bioimage.io package (--author NAME, repeatable)"
            )
    require_tensorflow()
    den = load_model(model_file)
    card, name = den.card, den.name
    m = card.size_multiple
    if tflite_size is not None and (tflite_size < m or tflite_size % m):
        raise ValueError(f"the TFLite size must be a positive multiple of {m} for {name}")
    out = Path(out)
    targets = {f: output_path(out, name, f) for f in fmts}
    existing = [str(p) for p in targets.values() if p.exists()]
    if existing and not overwrite:
        raise ValueError(f"{', '.join(existing)} exist(s); use overwrite (--overwrite) to replace")
    out.mkdir(parents=True, exist_ok=True)

    _, min_size = halo_and_min_size(card)
    side = _round_up(max(64, min_size), m)
    x = test_image(card.channels, side)
    errors: dict[str, float] = {}
    with (
        exact_float32(),
        tempfile.TemporaryDirectory(prefix=f".{name}-export-", dir=out) as tmp,
    ):
        reference = _numpy(den.model(x, training=False))
        stage = Path(tmp)
        saved_model: Path | None = None
        for fmt in fmts:
            t0 = time.perf_counter()
            target = targets[fmt]
            if fmt in ("saved_model", "bioimageio") and saved_model is None:
                saved_model = _saved_model(den, stage / "saved_model", x, reference, errors)
            if fmt == "saved_model":
                tmp_target = stage / "saved_model_copy"
                shutil.copytree(saved_model, tmp_target)
                err = errors["saved_model"]
            elif fmt == "tflite":
                tmp_target = stage / "model.tflite"
                err = _tflite(den, tmp_target, x, reference, tflite_size)
                errors["tflite"] = err
            else:
                tmp_target = stage / "package.zip"
                err = _bioimageio(
                    den, model_file, saved_model, tmp_target, x, reference, errors, info, min_size
                )
            _replace(tmp_target, target)
            yield ExportResult(fmt, target, err, time.perf_counter() - t0)


def _saved_model(den: Denoiser, path: Path, x, reference, errors: dict[str, float]) -> Path:
    from .export_tf import run_saved_model, write_saved_model

    try:
        write_saved_model(den.model, path, den.card.channels, den.card.size_multiple)
    except (ExportError, OSError):
        raise
    except Exception as err:  # TensorFlow failing to trace: one line, not a traceback
        raise ExportError(f"writing the SavedModel failed: {type(err).__name__}: {err}") from err
    errors["saved_model"] = _max_error(run_saved_model(path, x), reference, "the SavedModel")
    return path


def _tflite(den: Denoiser, path: Path, x, reference, size: int | None) -> float:
    from .export_tf import load_tflite, write_tflite

    write_tflite(den.model, path, den.card.channels, size=size)
    if size is not None:  # a fixed input shape: check on an image of that size
        x = test_image(den.card.channels, size)
        reference = _numpy(den.model(x, training=False))
    return _max_error(load_tflite(path)(x), reference, "the TFLite model")


def _bioimageio(
    den: Denoiser,
    model_file: Path,
    saved_model: Path,
    path: Path,
    x: np.ndarray,
    reference: np.ndarray,
    errors: dict[str, float],
    info: PackageInfo | None,
    min_size: int,
) -> float:
    from .export_bioimageio import run_package, write_bioimageio

    docs = _documentation(den, model_file, errors, x.shape[1])
    cover = _cover(den, den.card.channels, den.card.size_multiple, min_size)
    write_bioimageio(den.card, den.name, saved_model, path, x, reference, cover, docs, info)
    output, expected = run_package(path)
    return _max_error(output, expected, "the bioimage.io package")


def export_model(
    model: str | Path, formats: str | Sequence[str], out: str | Path, **kwargs
) -> list[ExportResult]:
    """Export a model to all ``formats``; the arguments are those of :func:`iter_export`."""
    return list(iter_export(model, formats, out, **kwargs))


# --------------------------------------------------------------------------- shell command


def add_export_parser(subparsers) -> argparse.ArgumentParser:
    """Add the ``export`` subcommand to the ``napari-bfcnn`` command's subparsers."""
    p = subparsers.add_parser(
        "export",
        help="export a model to TensorFlow SavedModel, TFLite and/or a bioimage.io package",
        description="Export a model (a name from `napari-bfcnn models` or a .keras path). Each "
        "file is reloaded and checked against the Keras model on a test image. SavedModel: "
        "float32 endpoint 'serve' (H, W multiples of the model's size multiple) and a uint8 "
        "endpoint like the original bfcnn models; TFLite: builtin ops only; bioimageio: a "
        "zip validated offline with bioimageio.spec.",
    )
    p.add_argument("model", metavar="MODEL", help="model name or .keras path")
    p.add_argument(
        "--to",
        default=",".join(FORMATS),
        help=f"comma-separated formats (default: {','.join(FORMATS)})",
    )
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--overwrite", action="store_true", help="replace existing exports")
    p.add_argument(
        "--tflite-size",
        type=int,
        help="fixed square TFLite input size (default: free batch, height and width)",
    )
    p.add_argument(
        "--author",
        action="append",
        help="bioimage.io author (repeatable; default: napari-bfcnn developers)",
    )
    p.add_argument("--license", default="MIT", help="SPDX license id of the package (default MIT)")
    p.set_defaults(func=run_export)
    return p


def run_export(args: argparse.Namespace) -> int:
    """Run the ``export`` subcommand; prints one line per format. Returns the exit code:
    1 if an export failed its check, 2 for anything refused or unwritable (an unknown
    model or format, an existing output, ``--out`` a file or read-only: ``OSError``s,
    reported as one line, not a traceback)."""
    from .modelfile import ModelFileError

    info = PackageInfo(
        authors=tuple(args.author) if args.author else PackageInfo().authors,
        license=args.license,
    )
    try:
        results = iter_export(
            args.model,
            args.to,
            args.out,
            overwrite=args.overwrite,
            tflite_size=args.tflite_size,
            info=info,
        )
        for r in results:
            err = f"max |export - keras| {r.max_error:.1e}"
            print(f"{r.format}: {r.path} ({err}, {r.seconds:.1f} s)")
    except (ExportError, ValueError, ModelFileError, OSError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1 if isinstance(err, ExportError) else 2
    return 0
