"""``napari-bfcnn denoise``: files, globs and folders in, denoised files out, never overwriting.

Why its own module: the command has three routes that must agree, kept out of
``cli.py`` (which only parses): small files are denoised in memory by
:class:`Denoiser`; ``.zarr`` folders and large TIFFs are read and written chunk
by chunk with :func:`denoise_dask`; with ``--workers`` or ``--scheduler`` every
file is denoised on a dask.distributed cluster. One bad file is reported and
skipped; the exit code is 1 if anything failed.
"""

from __future__ import annotations

import argparse
import math
import os
import shutil
import sys
from pathlib import Path
from typing import Any

__all__ = ["BY_DATA", "add_arguments", "output_path", "parse_offset", "plan_for_data", "run"]


def add_arguments(d: argparse.ArgumentParser) -> None:
    """The denoise subcommand's arguments."""
    d.add_argument("inputs", nargs="+", help="files, globs or folders (TIFF, PNG, JPEG, .zarr)")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--model", help="model name or .keras path (default: color for RGB, "
                   "microscopy for 12/16-bit camera data, else gray)")
    d.add_argument("--offset", default=None, metavar="auto|none|VALUE",
                   help="black level subtracted before and added back after denoising: 'auto' "
                   "(estimated per plane), 'none', or a number in the data's units (default: "
                   "auto for 12/16-bit camera data, else none)")
    d.add_argument("--tile", type=int, default=0, help="tile / chunk size in px (default: auto)")
    d.add_argument("--tta", type=int, default=1, choices=(1, 2, 4, 8), metavar="N",
                   help="test-time augmentation: average the model over N flips/transposes "
                   "(1 = off, 2, 4 or 8; with 8 about +0.1-0.25 dB at sigma 15-50 and up to "
                   "+0.7 dB at sigma 1-5 in the benchmark, for N times the work; default 1)")
    d.add_argument("--strength", type=_strength, default=1.0, metavar="S",
                   help="from 0 to 1: input + S * (denoised - input); 1 is the model's output, "
                   "less keeps part of the noise and fine grain (default 1)")
    d.add_argument("--suffix", default="_denoised", help="added to output file names")
    d.add_argument("--channel-axis", type=int, help="axis holding channels (default: guessed)")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.add_argument("--workers", type=int, default=0, metavar="N",
                   help="run on a local dask.distributed cluster of N worker processes")
    d.add_argument("--threads-per-worker", type=int, default=1, metavar="T",
                   help="dask threads per local worker (default 1)")
    d.add_argument("--scheduler", metavar="ADDRESS",
                   help="run on an existing dask.distributed scheduler (e.g. tcp://host:8786)")


def _strength(text: str) -> float:
    """``--strength``: the engine's check, by argparse before any work."""
    from .inference import _check_strength

    try:
        return _check_strength(float(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number from 0 to 1 (got {text!r})") from None


def output_path(path: Path, out_dir: Path, suffix: str) -> Path:
    """Where the result of ``path`` goes: same name plus ``suffix``; JPEG becomes PNG (lossless).

    The suffix goes before the whole extension, ``.ome.tif`` included
    (``s_denoised.ome.tif``): OME readers recognise OME files by that extension.
    """
    from .files import split_name

    base, ext = split_name(path)
    if ext.lower() in (".jpg", ".jpeg"):
        ext = ".png"
    return out_dir / f"{base}{suffix}{ext}"


def _clashes(files: list[Path], targets: list[Path]) -> list[list[Path]]:
    """Groups of inputs that would be written to the same output (``a/x.tif`` and
    ``b/x.tif``, or ``p.jpg`` and ``p.png``): the later one would replace the earlier."""
    by_target: dict[Path, list[Path]] = {}
    for path, target in zip(files, targets, strict=True):
        by_target.setdefault(target.resolve(), []).append(path)
    return [group for group in by_target.values() if len(group) > 1]


def _check_axis(axis: int, shape: tuple[int, ...]) -> int:
    """``axis`` as a non-negative index; out of range is an error, never wrapped around
    (axis 3 of a ZYX stack is no axis, not axis 0)."""
    n = len(shape)
    if not -n <= axis < n:
        raise ValueError(
            f"channel axis {axis} is out of range for an image of {n} dimensions {shape} "
            f"(use {-n} to {n - 1})"
        )
    return axis % n


BY_DATA = "by data"  # --offset not given: "auto" for camera data, else none


def plan_for_data(
    data: Any, axis: int | None, model: str | None, offset, samples: bool = False
) -> tuple[int | None, str, bool, float | str | None]:
    """Channel axis (non-negative), model name, whether the last channel is alpha, and
    the black level for the engine (``offset`` from :func:`parse_offset`, resolved by data).
    ``model`` None picks by data. The command line and the plugin's function follow it.
    ``samples``: the channel axis holds a pixel's samples (a TIFF's S axis, a PNG's
    colour type), so 3 of them are RGB even when stored planar (channels first) and a
    last axis of 2 is gray + alpha; a last axis of 3 or 4 is RGB(A) in any case.

    Why the default by data: camera data carry an offset the bias-free model must not
    see (it is scale-, not shift-equivariant); the widget sets "auto" for them too. Their
    noise, estimated on a centre crop, picks the model for correlated noise where needed.
    A model fine-tuned with another black level setting gets that one (its card says).
    """
    from .noise_model import estimate_centre_crop
    from .registry import default_model, default_offset, is_camera_data

    shape, dtype = tuple(int(n) for n in data.shape), data.dtype
    if axis is not None:
        axis = _check_axis(int(axis), shape)
    last = axis is not None and axis == len(shape) - 1
    rgb = axis is not None and ((last and shape[axis] in (3, 4)) or (samples and shape[axis] == 3))
    noise = None
    if model is None and is_camera_data(dtype, rgb):
        noise = estimate_centre_crop(data, axis)
    name = model or default_model(3 if rgb else 1, rgb=rgb, dtype=dtype, noise=noise)
    if offset == BY_DATA:  # a fine-tuned model's own black level, else by data
        offset = default_offset(name, dtype, rgb)
    alpha = last and ((rgb and shape[axis] == 4) or (samples and shape[axis] == 2))
    return axis, name, alpha, offset


def _holds_samples(path: Path, axes: str, ndim: int, axis: int | None) -> bool:
    """Whether ``axis`` holds a pixel's samples (see :func:`plan_for_data`): a TIFF's S
    axis (when the file names every axis), or any channel axis of a PNG, JPEG or BMP."""
    if axis is None:
        return False
    if path.suffix.lower() in (".tif", ".tiff", ".zarr"):
        return len(axes) == ndim and axes[axis % ndim] == "S"
    return True


def parse_offset(text: str | None) -> float | str | None:
    """``--offset`` as given: a number, "auto", None for "none", or :data:`BY_DATA` if absent."""
    if text is None:
        return BY_DATA
    low = text.strip().lower()
    if low == "auto":
        return "auto"
    if low == "none":
        return None
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"--offset must be 'auto', 'none' or a number (got {text!r})") from None
    if not math.isfinite(value):
        raise ValueError(f"--offset must be a finite number (got {text!r})")
    return value


def _denoise_lazy(
    data: Any, axis: int | None, name: str, alpha: bool, tile: int | None, offset=None,
    tta: int = 1, strength: float = 1.0,
) -> Any:
    """dask in, dask out; alpha (the last channel of RGBA or gray + alpha) passed through.

    The result keeps the engine's chunks: the TIFF writer computes one row of them at a
    time, each once (chunks given back as the input's would straddle them); zarr
    rechunks in the one graph it stores.
    """
    import dask.array as da

    from .dask_inference import denoise_dask

    kwargs = dict(
        channel_axis=axis, tile=tile, offset=offset, tta=tta, strength=strength, input_chunks=False
    )
    if alpha:
        colour = denoise_dask(data[..., :-1], name, **kwargs)
        alpha_plane = data[..., -1:].astype(colour.dtype).rechunk(colour.chunks[:-1] + (1,))
        return da.concatenate([colour, alpha_plane], axis=-1)
    return denoise_dask(data, name, **kwargs)


def _denoise_in_memory(
    data: Any, axis: int | None, name: str, alpha: bool, tile: int | None, offset=None,
    tta: int = 1, strength: float = 1.0,
):
    import numpy as np

    from .registry import load_model

    rgba = data
    if alpha:
        data = data[..., :-1]
    result = load_model(name).denoise(
        data, channel_axis=axis, tile=tile, offset=offset, tta=tta, strength=strength
    )
    if alpha:
        result = np.concatenate([result, rgba[..., -1:].astype(result.dtype)], axis=-1)
    return result


def _compute(delayed: Any, client: Any, label: str, quiet: bool) -> None:
    """Compute with a progress bar: tqdm for local threads, dask's own for a cluster."""
    if client is not None:
        future = client.compute(delayed)
        try:
            if not quiet:
                from distributed import progress

                progress(future)
                print(file=sys.stdout)
            future.result()
        except BaseException:  # Ctrl-C or a failed chunk: workers must stop writing it
            client.cancel(future)
            raise
        return
    from tqdm.dask import TqdmCallback

    with TqdmCallback(desc=label, leave=False, disable=quiet, unit="chunk"):
        delayed.compute()


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path)
    elif path.exists():
        path.unlink()


def _one_lazy(
    path: Path, target: Path, args: argparse.Namespace, offset, client: Any, bar: Any
) -> str:
    """A .zarr folder or a TIFF, chunk by chunk, written to a hidden file then renamed."""
    from tqdm import tqdm

    from .files import open_lazy, write_tiff_lazy, write_zarr_lazy

    image = open_lazy(path, chunk=args.tile or 1024)
    axis = image.channel_axis if args.channel_axis is None else args.channel_axis
    samples = _holds_samples(path, image.axes, image.data.ndim, axis)
    axis, name, alpha, offset = plan_for_data(image.data, axis, args.model, offset, samples)
    tile = args.tile or None
    if tile is not None:  # the engine's chunks (size multiple, overlap), or bands compute twice
        from .dask_inference import chunk_side

        tile = chunk_side(name, tile)
        if tile != args.tile:
            image = open_lazy(path, chunk=tile)
    image.channel_axis = axis
    result = _denoise_lazy(image.data, axis, name, alpha, tile, offset, args.tta, args.strength)
    partial = target.with_name(f".{target.name}.partial")
    _remove(partial)
    try:
        if image.kind == "zarr":
            _compute(write_zarr_lazy(partial, image, result), client, path.name, args.quiet)
        else:
            pixels = result.size // (result.shape[-1] if axis == result.ndim - 1 else 1)
            with tqdm(total=pixels, desc=path.name, unit="px", unit_scale=True, leave=False,
                      disable=args.quiet) as px:
                write_tiff_lazy(partial, image, result, progress=px.update)
        _remove(target)  # only reached with --overwrite: checked before
        os.replace(partial, target)
    finally:
        _remove(partial)
    return name


def _one_file(path: Path, target: Path, args: argparse.Namespace, offset, client: Any) -> str:
    """A TIFF, PNG or JPEG read whole; denoised in memory, or on the cluster when there is one."""
    from .files import read_image_file, write_image_file

    image = read_image_file(path)
    axis = image.channel_axis if args.channel_axis is None else args.channel_axis
    samples = _holds_samples(path, image.axes, image.data.ndim, axis)
    axis, name, alpha, offset = plan_for_data(image.data, axis, args.model, offset, samples)
    tile = args.tile or None
    if client is not None:
        result = _denoise_lazy(
            image.data, axis, name, alpha, tile, offset, args.tta, args.strength
        ).compute()
    else:
        result = _denoise_in_memory(
            image.data, axis, name, alpha, tile, offset, args.tta, args.strength
        )
    write_image_file(target, image, result)
    return name


def _is_lazy(path: Path, clustered: bool) -> bool:
    from .files import LAZY_SUFFIXES, LAZY_TIFF_BYTES, tiff_nbytes

    suffix = path.suffix.lower()
    if suffix in LAZY_SUFFIXES:
        return True
    if suffix not in (".tif", ".tiff"):
        return False
    try:
        return clustered or tiff_nbytes(path) > LAZY_TIFF_BYTES
    except Exception:  # unreadable: the in-memory reader reports it with its reason
        return False


def _model_exists(model: str) -> bool:
    """Whether ``--model`` names a model; if not, says so with the available ones.

    Why before the loop: otherwise the same message comes once per file, after reading it.
    """
    from .modelfile import ModelFileError
    from .registry import _resolve

    try:
        _resolve(model)
    except (ValueError, ModelFileError) as err:
        print(f"error: --model: {err}", file=sys.stderr)
        return False
    return True


def run(args: argparse.Namespace) -> int:
    """Run the denoise subcommand; 0 if every input was written, 1 if any failed, 2 if
    nothing was tried (a bad ``--offset`` or ``--model``, two inputs with one output)."""
    from tqdm import tqdm

    from .cli import _expand_inputs

    try:
        offset = parse_offset(args.offset)  # once, so a typo fails before any work
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.model is not None and not _model_exists(args.model):
        return 2
    files, missing = _expand_inputs(args.inputs, lazy=True, skip_suffix=args.suffix)
    failed = len(missing)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    if not files:
        print("error: no input images found", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    targets = [output_path(path, out_dir, args.suffix) for path in files]
    clashes = _clashes(files, targets)
    for group in clashes:
        names = ", ".join(str(p) for p in group)
        print(f"error: {names} would all be written to "
              f"{output_path(group[0], out_dir, args.suffix)}", file=sys.stderr)
    if clashes:
        print("error: nothing written: denoise them in separate runs, with different --out "
              "folders or --suffix values", file=sys.stderr)
        return 2
    out_dir.mkdir(parents=True, exist_ok=True)
    client = None
    if args.workers or args.scheduler:
        from .dask_inference import local_client

        client = local_client(args.workers, args.scheduler, args.threads_per_worker)
    bar = tqdm(files, unit="file", disable=args.quiet)
    try:
        for path, target in zip(bar, targets, strict=True):
            bar.set_description(path.name)
            try:
                lazy = _is_lazy(path, client is not None)
                if target.resolve() == path.resolve() and (lazy or not args.overwrite):
                    raise ValueError("output would overwrite the input (use another --suffix)"
                                     if lazy else
                                     "output would overwrite the input (use --overwrite)")
                if target.exists() and not args.overwrite:
                    raise ValueError(f"{target} exists (use --overwrite to replace it)")
                if lazy:
                    name = _one_lazy(path, target, args, offset, client, bar)
                else:
                    name = _one_file(path, target, args, offset, client)
                bar.write(f"{path} -> {target} ({name})")
            except Exception as err:  # one bad file must not stop the batch
                failed += 1
                bar.write(f"error: {path}: {err}")
    finally:
        bar.close()
        if client is not None:
            cluster = client.cluster if args.workers and not args.scheduler else None
            client.close()
            if cluster is not None:
                cluster.close()
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0
