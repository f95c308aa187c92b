"""The ``napari-bfcnn`` command: denoise files, train, list models, benchmark.

Why a thin layer: every subcommand is the engine's own function with argument
parsing around it, so the shell, the napari plugin and the tests run the same code.
"""

from __future__ import annotations

import argparse
import glob
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["main"]


def _expand_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Files, globs and folders (non-recursive) -> image files, plus what matched nothing."""
    from .files import SUFFIXES

    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        matches = sorted(glob.glob(item)) if any(c in item for c in "*?[") else [item]
        if not matches:
            missing.append(item)
        for m in matches:
            p = Path(m)
            if p.is_dir():
                files += sorted(q for q in p.iterdir() if q.suffix.lower() in SUFFIXES)
            elif p.exists():
                files.append(p)
            else:
                missing.append(item)
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, missing


def _cmd_denoise(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .files import read_image_file, write_image_file
    from .registry import default_model, load_model

    files, missing = _expand_inputs(args.inputs)
    failed = len(missing)
    for m in missing:
        print(f"error: {m}: no such file or folder", file=sys.stderr)
    if not files:
        print("error: no input images found", file=sys.stderr)
        return 1
    out_dir = Path(args.out)
    bar = tqdm(files, unit="file", disable=args.quiet)
    for path in bar:
        bar.set_description(path.name)
        target = out_dir / f"{path.stem}{args.suffix}{path.suffix}"
        try:
            if target.resolve() == path.resolve() and not args.overwrite:
                raise ValueError("output would overwrite the input (use --overwrite)")
            if target.exists() and not args.overwrite:
                raise ValueError(f"{target} exists (use --overwrite to replace it)")
            image = read_image_file(path)
            axis = image.channel_axis if args.channel_axis is None else args.channel_axis
            channels = 1 if axis is None else image.data.shape[axis]
            rgb = axis is not None and axis == image.data.ndim - 1 and channels in (3, 4)
            name = args.model or default_model(1 if not rgb else 3, rgb=rgb)
            denoiser = load_model(name)
            data = image.data
            alpha = None
            if rgb and channels == 4:  # RGBA: the alpha channel is passed through untouched
                data, alpha = data[..., :3], data[..., 3:]
            result = denoiser.denoise(data, channel_axis=axis, tile=args.tile or None)
            if alpha is not None:
                import numpy as np

                result = np.concatenate([result, alpha.astype(result.dtype)], axis=-1)
            written = write_image_file(target, image, result)
            bar.write(f"{path} -> {written} ({denoiser.name})")
        except Exception as err:  # one bad file must not stop the batch
            failed += 1
            bar.write(f"error: {path}: {err}")
    if failed:
        print(f"{failed} input(s) failed", file=sys.stderr)
    return 1 if failed else 0


def _cmd_models(args: argparse.Namespace) -> int:
    from .registry import list_models

    rows = list_models()
    if not rows:
        print("no models installed")
        return 0
    print(f"{'name':20s} {'kind':10s} {'ch':>2s} {'params':>9s} {'rf':>4s}  where / description")
    for m in rows:
        where = "bundled" if m.builtin else str(m.path)
        if m.error:
            print(f"{m.name:20s} {'BROKEN':10s} {'':>2s} {'':>9s} {'':>4s}  {m.path}: {m.error}")
            continue
        print(
            f"{m.name:20s} {m.kind:10s} {m.channels:>2d} {m.parameters:>9,d} {m.receptive_field:>4d}"
            f"  {where}: {m.description[:60]}"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_from_args

    return run_from_args(args)


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return int(bench_main(args.bench_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The command's argument parser (subcommands denoise, train, models, bench)."""
    parser = argparse.ArgumentParser(
        prog="napari-bfcnn", description="Bias-free CNN denoising from the shell."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("denoise", help="denoise image files (TIFF, PNG, JPEG) into a folder")
    d.add_argument("inputs", nargs="+", help="files, globs or folders")
    d.add_argument("--out", required=True, help="output folder")
    d.add_argument("--model", help="model name or .keras path (default: gray / color by image)")
    d.add_argument("--tile", type=int, default=0, help="tile size in pixels (default: automatic)")
    d.add_argument("--suffix", default="_denoised", help="added to output file names")
    d.add_argument("--channel-axis", type=int, help="axis holding channels (default: guessed)")
    d.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    d.add_argument("--quiet", action="store_true", help="no progress bar")
    d.set_defaults(func=_cmd_denoise)

    from .train import build_parser as train_parser

    t = sub.add_parser("train", help="train or fine-tune a model from a recipe")
    train_parser(t)
    t.set_defaults(func=_cmd_train)

    m = sub.add_parser("models", help="list bundled and user models")
    m.set_defaults(func=_cmd_models)

    b = sub.add_parser("bench", help="run the benchmark (arguments as python -m src_models.bench)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-bfcnn`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
