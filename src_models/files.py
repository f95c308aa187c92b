"""Read and write image files for the command line, keeping dtype and resolution metadata.

Why separate: the CLI, the benchmark and the training command all read files,
and only here do file formats (TIFF axes, OME / ImageJ resolution, PNG, JPEG)
turn into arrays plus a channel axis.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "LAZY_SUFFIXES",
    "LAZY_TIFF_BYTES",
    "ImageFile",
    "LazyImage",
    "SUFFIXES",
    "open_lazy",
    "read_image_file",
    "split_name",
    "tiff_nbytes",
    "write_image_file",
    "write_tiff_lazy",
    "write_zarr_lazy",
]

SUFFIXES = (".tif", ".tiff", ".png", ".jpg", ".jpeg", ".bmp")
LAZY_SUFFIXES = (".zarr",)  # folders read and written chunk by chunk
# extensions of two parts: OME readers recognise OME files by the whole of it
_DOUBLE_SUFFIXES = (".ome.tif", ".ome.tiff", ".ome.zarr")
LAZY_TIFF_BYTES = 1 << 30  # TIFFs with more pixel bytes than this are read chunk by chunk
TIFF_TILE = 512  # tile side of TIFFs written chunk by chunk (a multiple of 16)


@dataclass
class ImageFile:
    """An image read from disk: pixels, which axis holds channels, and what to write back."""

    data: np.ndarray
    channel_axis: int | None
    axes: str = ""
    tiff_kwargs: dict[str, Any] = field(default_factory=dict)


def split_name(path: str | Path) -> tuple[str, str]:
    """File name -> (base, extension), ``.ome.tif``, ``.ome.tiff`` and ``.ome.zarr`` kept whole.

    Why: a name made from the base must keep the OME extension at its end
    (``s.ome.tif`` -> ``s_denoised.ome.tif``), or OME readers take it for a plain TIFF.
    """
    name = Path(path).name
    for ext in _DOUBLE_SUFFIXES:
        if name.lower().endswith(ext) and len(name) > len(ext):
            return name[: -len(ext)], name[-len(ext) :]
    p = Path(name)
    return p.stem, p.suffix


class _SeriesError(ValueError):
    """A TIFF holding several image series (its message names the file and the count)."""


def _only_series(tif: Any, path: str | Path) -> Any:
    """The single image series of a TIFF; several are refused, not silently cut to the first.

    Why: Micro-Manager multi-position files, and frames written one ``TiffWriter.write``
    at a time, hold one series each; reading the first would drop all the others.
    """
    count = len(tif.series)
    if count != 1:
        raise _SeriesError(
            f"{path}: holds {count} image series (e.g. positions, or frames written one "
            "at a time); only single-series TIFFs are supported: split it into one file "
            "per series (e.g. with tifffile or Fiji) and denoise those"
        )
    return tif.series[0]


def _guess_channel_axis(shape: tuple[int, ...], axes: str = "") -> int | None:
    """Channel axis from TIFF axes letters (C or S), else a trailing 3/4 (RGB/RGBA).

    ``axes`` has one letter per axis of the data, tifffile's "Q" (unknown) included;
    letters that do not match the data's dimensions are ignored.
    """
    if len(axes) != len(shape):
        axes = ""
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
        data = read_pixels(path)
    except _SeriesError:
        raise
    except (OSError, ValueError, SyntaxError, RuntimeError) as err:  # decoders raise many kinds
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    la = data.ndim == 3 and data.shape[-1] == 2  # gray + alpha (PNG colour type 4)
    return ImageFile(data, 2 if la else _guess_channel_axis(data.shape))


def read_pixels(path: str | Path) -> np.ndarray:
    """The pixels of a PNG / JPEG / other non-TIFF image; CMYK converted to RGB.

    Why the conversion: imageio gives a CMYK JPEG's 4 channels as they are, which
    pass for RGBA (pure red would come out cyan, its black as alpha).
    """
    import imageio.v3 as iio
    from PIL import Image

    with Image.open(path) as im:
        if im.mode == "CMYK":
            return np.asarray(im.convert("RGB"))
    return np.asarray(iio.imread(path))


def _read_tiff(path: Path) -> ImageFile:
    import tifffile

    with tifffile.TiffFile(path) as tif:
        data = _only_series(tif, path).asarray()
        axes, kwargs = _tiff_meta(tif)
    return ImageFile(data, _guess_channel_axis(data.shape, axes), axes, kwargs)


_OME_PIXELS = tuple(
    f"{name}{unit}" for name in ("PhysicalSizeX", "PhysicalSizeY", "PhysicalSizeZ", "TimeIncrement")
    for unit in ("", "Unit")
)


def _tag(el: Any) -> str:
    return el.tag.rsplit("}", 1)[-1]


def _ome_channel_names(pixels: Any) -> list[str]:
    """Names of an OME ``Pixels`` element's channels; none unless each one-sample channel has one.

    Why all or nothing: tifffile writes the names in order, one per channel of the C axis.
    """
    channels = [el for el in pixels if _tag(el) == "Channel"]
    if any("Name" not in c.attrib or c.attrib.get("SamplesPerPixel", "1") != "1"
           for c in channels):
        return []
    return [c.attrib["Name"] for c in channels]


def _ome_pixels(xml: str) -> dict[str, Any]:
    """Physical pixel sizes, time step and channel names of the first OME image
    (what tifffile writes back)."""
    import xml.etree.ElementTree as ET

    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return {}
    for el in root.iter():
        if _tag(el) == "Pixels":
            out: dict[str, Any] = {}
            for key in _OME_PIXELS:
                if key in el.attrib:
                    value = el.attrib[key]
                    out[key] = value if key.endswith("Unit") else float(value)
            names = _ome_channel_names(el)
            if names:
                out["Channel"] = {"Name": names}
            return out
    return {}


def _tiff_meta(tif: Any) -> tuple[str, dict[str, Any]]:
    """Series axes and the ``tifffile.imwrite`` arguments that keep resolution and axes."""
    axes = tif.series[0].axes
    kwargs: dict[str, Any] = {}
    page = tif.pages[0]
    res = page.tags.get("XResolution"), page.tags.get("YResolution")
    if all(res):
        kwargs["resolution"] = (res[0].value, res[1].value)
        unit = page.tags.get("ResolutionUnit")
        if unit is not None:
            kwargs["resolutionunit"] = unit.value
    if tif.is_imagej and tif.imagej_metadata:
        wanted = ("spacing", "unit", "finterval")
        keep = {k: v for k, v in tif.imagej_metadata.items() if k in wanted}
        kwargs["imagej"] = True
        kwargs["metadata"] = {"axes": axes, **keep}
    elif tif.is_ome:
        kwargs["ome"] = True
        kwargs["metadata"] = {"axes": axes, **_ome_pixels(tif.ome_metadata or "")}
    return axes, kwargs


def _sample_layout(channel_axis: int | None, axes: str, data: Any, kwargs: dict) -> bool:
    """Set how a TIFF stores a pixel's samples, as the source did; True for contiguous samples.

    Why explicit: tifffile writes a last axis of 2 or 5+ samples as one page per row
    unless told (and band by band each row recomputed its whole chunk), and its default
    for planar RGB is going to change.
    """
    if channel_axis is None or kwargs.get("imagej"):
        return False
    n = int(data.shape[channel_axis])
    if channel_axis == data.ndim - 1 and data.ndim >= 3 and n >= 2:
        rgb = n in (3, 4)
        kwargs.setdefault("photometric", "rgb" if rgb else "minisblack")
        kwargs.setdefault("planarconfig", "contig")
        if not rgb:  # gray + alpha, or 5+ channels: one page, not one per row
            kwargs.setdefault("extrasamples", ["unspecified"] * (n - 1))
        return True
    if axes.endswith("SYX") and channel_axis == data.ndim - 3 and n in (3, 4):
        kwargs.setdefault("photometric", "rgb")  # planar RGB, as it came
        kwargs.setdefault("planarconfig", "separate")
    return False


def write_image_file(path: str | Path, image: ImageFile, data: np.ndarray) -> Path:
    """Write ``data`` like ``image`` was read: TIFF keeps resolution / ImageJ / OME metadata.

    JPEG inputs are written as PNG next to the requested name: a denoised image
    should not be re-compressed with a lossy codec. The file is written under a
    hidden name and renamed when complete, so a failed write (full disk, encoder
    error) never leaves a truncated file, nor truncates the input written over.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in (".jpg", ".jpeg"):
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.stem}.partial{path.suffix}")
    try:
        if suffix in (".tif", ".tiff"):
            import tifffile

            kwargs = dict(image.tiff_kwargs)
            if kwargs.get("imagej") and data.dtype not in (np.uint8, np.uint16, np.float32):
                kwargs.pop("imagej")
            _sample_layout(image.channel_axis, image.axes, data, kwargs)
            tifffile.imwrite(partial, data, **kwargs)
        else:
            import imageio.v3 as iio

            iio.imwrite(partial, data)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return path


# --------------------------------------------------------------------------- chunk by chunk


@dataclass
class LazyImage:
    """A zarr array or TIFF opened as a dask array, with what is needed to write the result.

    Why: images larger than memory are denoised and written chunk by chunk; the
    source file stays closed, and each task reopens it (worker processes too).
    """

    data: Any  # dask.array.Array
    channel_axis: int | None
    kind: str  # "zarr" or "tiff"
    axes: str = ""
    tiff_kwargs: dict[str, Any] = field(default_factory=dict)
    zarr_chunks: tuple[int, ...] | None = None
    zarr_attrs: dict[str, Any] = field(default_factory=dict)
    zarr_format: int | None = None  # written back in the same format (2 or 3)
    ome_attrs: dict[str, Any] | None = None  # an OME-Zarr group's attributes (level 0 read)
    ome_path: str = ""  # level 0's path in that group
    zarr_layout: dict[str, Any] = field(default_factory=dict)  # chunk keys, dimension names


def tiff_nbytes(path: str | Path) -> int:
    """Uncompressed size of a TIFF's image series in bytes, read from its header only."""
    import tifffile

    with tifffile.TiffFile(path) as tif:
        series = _only_series(tif, path)
        return int(np.prod(series.shape)) * np.dtype(series.dtype).itemsize


def _open_zarr(path: Path) -> Any:
    """The array in a ``.zarr`` folder: the array itself, or level 0 of an OME-Zarr group.

    The path is made absolute: zarr keeps it as given, and dask workers running in
    another working directory would otherwise read (and write) somewhere else.
    """
    import zarr

    node = zarr.open(str(path.resolve()), mode="r")
    if hasattr(node, "shape"):
        return node
    scales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
    if scales:
        return node[scales[0]["datasets"][0]["path"]]
    arrays = [name for name, _ in node.arrays()]
    if len(arrays) == 1:
        return node[arrays[0]]
    raise ValueError(
        f"{path} is a zarr group with {len(arrays)} arrays ({', '.join(arrays) or 'none'}): "
        "give the array's own folder, e.g. " + str(path / (arrays[0] if arrays else "0"))
    )


def _ome_group(path: Path) -> tuple[dict[str, Any], str] | None:
    """An OME-Zarr group's attributes and its level 0's path; None for a plain array."""
    import zarr

    node = zarr.open(str(path.resolve()), mode="r")
    if hasattr(node, "shape"):
        return None
    attrs = node.attrs.asdict()
    scales = attrs.get("multiscales") or attrs.get("ome", {}).get("multiscales")
    if not scales:
        return None
    return attrs, str(scales[0]["datasets"][0]["path"])


def _zarr_layout(arr: Any) -> dict[str, Any]:
    """``create_array`` arguments keeping a zarr array's chunk key separator and dimension
    names. Why: OME-Zarr 0.4 (zarr v2) requires "/" chunk keys, 0.5 (v3) dimension names
    matching its axes; zarr's defaults give neither."""
    meta = getattr(arr, "metadata", None)
    out: dict[str, Any] = {}
    separator = getattr(meta, "dimension_separator", None)  # zarr v2
    if separator is not None:
        out["chunk_key_encoding"] = {"name": "v2", "separator": str(separator)}
    encoding = getattr(meta, "chunk_key_encoding", None)  # zarr v3
    if encoding is not None:
        out["chunk_key_encoding"] = encoding
    names = getattr(meta, "dimension_names", None)
    if names is not None:
        out["dimension_names"] = list(names)
    return out


def _one_level(attrs: dict[str, Any]) -> dict[str, Any]:
    """OME-Zarr group attributes describing level 0 only (the denoised result has no pyramid)."""
    import copy

    attrs = copy.deepcopy(attrs)
    holder = attrs["ome"] if "multiscales" not in attrs else attrs
    scales = holder["multiscales"]
    holder["multiscales"] = [{**scales[0], "datasets": scales[0]["datasets"][:1]}]
    return attrs


def _ome_zarr_channel_axis(path: Path) -> int | None:
    """Channel axis from OME-Zarr ``multiscales`` axes (type ``channel``), if any."""
    import zarr

    try:
        node = zarr.open(str(path.resolve()), mode="r")
        scales = node.attrs.get("multiscales") or node.attrs.get("ome", {}).get("multiscales")
        axes = scales[0]["axes"]
    except (KeyError, IndexError, TypeError, AttributeError, ValueError):
        return None
    kinds = [a.get("type") if isinstance(a, dict) else None for a in axes]
    return kinds.index("channel") if "channel" in kinds else None


def _tiff_block(path: str, block_info: dict | None = None) -> np.ndarray:
    """Read one chunk of a TIFF's first series (opened per task: picklable, no open handles)."""
    import tifffile
    import zarr

    region = tuple(slice(a, b) for a, b in block_info[None]["array-location"])
    with tifffile.TiffFile(path) as tif:
        store = tif.series[0].aszarr(level=0)
        try:
            return np.asarray(zarr.open(store, mode="r")[region])
        finally:
            store.close()


def open_lazy(path: str | Path, chunk: int = 1024) -> LazyImage:
    """Open a ``.zarr`` folder or a TIFF as a dask array without reading its pixels.

    Parameters
    ----------
    path : str or Path
    chunk : int
        TIFF spatial chunk side (zarr keeps its own chunks); one plane per chunk.

    Raises
    ------
    ValueError
        The file cannot be opened; the message names it and the reason.
    """
    import dask.array as da

    path = Path(path)
    try:
        if path.suffix.lower() in LAZY_SUFFIXES:
            arr = _open_zarr(path)
            axis = _ome_zarr_channel_axis(path)
            if axis is None:
                axis = _guess_channel_axis(tuple(arr.shape))
            ome = _ome_group(path)
            return LazyImage(
                da.from_zarr(arr), axis, "zarr",
                zarr_chunks=tuple(arr.chunks), zarr_attrs=dict(arr.attrs),
                zarr_format=getattr(getattr(arr, "metadata", None), "zarr_format", None),
                ome_attrs=ome[0] if ome else None, ome_path=ome[1] if ome else "",
                zarr_layout=_zarr_layout(arr),
            )
        import tifffile

        with tifffile.TiffFile(path) as tif:
            series = _only_series(tif, path)
            shape, dtype = tuple(series.shape), np.dtype(series.dtype)
            axes, kwargs = _tiff_meta(tif)
    except _SeriesError:
        raise
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise ValueError(f"{path}: cannot read image ({type(err).__name__}: {err})") from None
    axis = _guess_channel_axis(shape, axes)
    spatial = [a for a in range(len(shape)) if a != axis][-2:]
    chunks = tuple(
        min(chunk, n) if a in spatial else (n if a == axis else 1) for a, n in enumerate(shape)
    )
    data = da.map_blocks(
        _tiff_block, chunks=da.core.normalize_chunks(chunks, shape), dtype=dtype,
        meta=np.empty((0,) * len(shape), dtype), path=str(path.resolve()),
    )
    return LazyImage(data, axis, "tiff", axes, kwargs)


def write_zarr_lazy(path: str | Path, image: LazyImage, data: Any) -> Any:
    """A delayed write of ``data`` (dask) to a new zarr array at ``path`` (fails if it exists).

    Keeps the source's chunk shape (when it was zarr) and its attributes. An OME-Zarr
    source gives an OME-Zarr group of one level: its metadata (axes, pixel sizes,
    channels) with only level 0 listed, the result at level 0's path. Why
    ``store`` and not ``to_zarr``: ``to_zarr`` into an existing array re-chunks to
    dask's "auto" size (and warns); here every dask chunk is exactly one zarr
    chunk, which is what makes parallel writes safe, with any dask version. The
    path is made absolute, as dask workers may run in another working directory.
    """
    import dask.array as da
    import zarr

    chunks = image.zarr_chunks or tuple(c[0] for c in data.chunks)
    chunks = tuple(min(c, n) for c, n in zip(chunks, data.shape, strict=True))
    fmt = {"zarr_format": image.zarr_format} if image.zarr_format else {}  # zarr 3 only
    where = str(Path(path).resolve())
    if image.ome_attrs is not None:
        group = zarr.open_group(where, mode="w-", **fmt)
        group.attrs.update(_one_level(image.ome_attrs))
        out = group.create_array(
            image.ome_path, shape=data.shape, chunks=chunks, dtype=data.dtype,
            **image.zarr_layout,
        )
    else:
        out = zarr.create_array(
            where, shape=data.shape, chunks=chunks, dtype=data.dtype, overwrite=False,
            **fmt, **image.zarr_layout,
        )
    if image.zarr_attrs:
        out.attrs.update(image.zarr_attrs)
    return da.store(data.rechunk(chunks), out, lock=False, compute=False)


def write_tiff_lazy(
    path: str | Path,
    image: LazyImage,
    data: Any,
    progress: Any = None,
) -> Path:
    """Write ``data`` (dask) to a TIFF band by band, keeping the source's TIFF metadata.

    Why bands: one row of tiles is computed at a time (in parallel across its
    chunks), so memory stays at one band. ImageJ files cannot be tiled and are
    written a page (one plane) at a time.

    Parameters
    ----------
    progress : callable, optional
        Called with the number of pixels of each band written.
    """
    import tifffile

    path = Path(path)
    kwargs = dict(image.tiff_kwargs)
    if kwargs.get("imagej") and data.dtype not in (np.uint8, np.uint16, np.float32):
        kwargs.pop("imagej")
    contig = _sample_layout(image.channel_axis, image.axes, data, kwargs)
    page_ndim = 3 if contig else 2
    lead = data.shape[: data.ndim - page_ndim]
    height = data.shape[data.ndim - page_ndim]
    t = TIFF_TILE

    def pages():
        for idx in np.ndindex(*lead):
            page = np.asarray(data[idx])
            if progress is not None:
                progress(page.shape[0] * page.shape[1])
            yield page

    def tiles():
        rows = data.chunks[data.ndim - page_ndim]  # bands follow the chunks: each computed once
        for idx in np.ndindex(*lead):
            buffer, y = None, 0
            for n in rows:
                band = np.asarray(data[idx][y : y + n])
                y += n
                if progress is not None:
                    progress(band.shape[0] * band.shape[1])
                buffer = band if buffer is None else np.concatenate([buffer, band])
                while buffer.shape[0] >= t or (y == height and len(buffer)):
                    for x in range(0, buffer.shape[1], t):
                        yield buffer[:t, x : x + t]
                    buffer = buffer[t:]

    tiled = not kwargs.get("imagej")
    source = tiles() if tiled else pages()
    if tiled:
        kwargs["tile"] = (t, t)
    tifffile.imwrite(path, source, shape=data.shape, dtype=data.dtype, **kwargs)
    return path
