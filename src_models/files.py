"""Read and write image files for the command line, keeping dtype and resolution metadata.

Why separate: the CLI, the benchmark and the training command all read files,
and only here do file formats (TIFF axes, OME / ImageJ resolution, PNG, JPEG)
turn into arrays plus a channel axis.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["ImageFile", "SUFFIXES", "read_image_file", "write_image_file"]

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")


@dataclass
class ImageFile:
    """An image read from disk: pixels, which axis holds channels, and what to write back."""

    data: np.ndarray
    channel_axis: int | None
    axes: str = ""
    tiff_kwargs: dict[str, Any] = field(default_factory=dict)


def _guess_channel_axis(shape: tuple[int, ...], axes: str = "") -> int | None:
    """Channel axis from TIFF axes letters (C or S), else a trailing 3/4 (RGB/RGBA)."""
    for letter in ("S", "C"):
        if letter in axes:
            return axes.index(letter)
    if len(shape) == 3 and shape[-1] in (3, 4):
        return len(shape) - 1
    return None


def read_image_file(path: str | Path) -> ImageFile:
    """Read a TIFF (multi-page, OME, ImageJ), PNG, JPEG or BMP file.

    Raises
    ------
    ValueError
        The file cannot be decoded; the message names the file and the reason.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in SUFFIXES:
        raise ValueError(f"{path}: unsupported file type {suffix!r} (use {', '.join(SUFFIXES)})")
    try:
        if suffix in (".tif", ".tiff"):
            return _read_tiff(path)
        import imageio.v3 as iio

        data = np.asarray(iio.imread(path))
    except (OSError, ValueError, SyntaxError, RuntimeError) as err:  # decoders raise many kinds
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    return ImageFile(data, _guess_channel_axis(data.shape))


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = tif.series[0]
        data = series.asarray()
        axes = series.axes
        kwargs: dict[str, Any] = {}
        page = tif.pages[0]
        res = page.tags.get("XResolution"), page.tags.get("YResolution")
        if all(res):
            kwargs["resolution"] = (res[0].value, res[1].value)
            unit = page.tags.get("ResolutionUnit")
            if unit is not None:
                kwargs["resolutionunit"] = unit.value
        if tif.is_imagej and tif.imagej_metadata:
            keep = {k: v for k, v in tif.imagej_metadata.items() if k in ("spacing", "unit", "axes")}
            kwargs["imagej"] = True
            kwargs["metadata"] = keep
        elif tif.is_ome:
            kwargs["ome"] = True
            kwargs["metadata"] = {"axes": axes}
    axes_clean = axes.replace("Q", "")
    return ImageFile(data, _guess_channel_axis(data.shape, axes_clean), axes, kwargs)


def write_image_file(path: str | Path, image: ImageFile, data: np.ndarray) -> Path:
    """Write ``data`` like ``image`` was read: TIFF keeps resolution / ImageJ / OME metadata.

    JPEG inputs are written as PNG next to the requested name: a denoised image
    should not be re-compressed with a lossy codec.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix in (".tif", ".tiff"):
        import tifffile

        kwargs = dict(image.tiff_kwargs)
        if kwargs.get("imagej") and data.dtype not in (np.uint8, np.uint16, np.float32):
            kwargs.pop("imagej")
        if image.channel_axis is not None and data.ndim == 3 and data.shape[-1] in (3, 4) \
                and image.channel_axis == data.ndim - 1 and not kwargs.get("imagej"):
            kwargs.setdefault("photometric", "rgb")
        tifffile.imwrite(path, data, **kwargs)
    else:
        import imageio.v3 as iio

        iio.imwrite(path, data)
    return path
