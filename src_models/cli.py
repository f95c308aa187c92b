"""The ``napari-bfcnn`` command: denoise files, train, fine-tune, list models, benchmark, export.

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


def _matches(item: str) -> list[str]:
    """The paths an input names: itself when it exists (``img[1].tif`` is a file name, not a
    pattern), else the glob's matches (none for a missing plain name)."""
    if Path(item).exists() or not any(c in item for c in "*?["):
        return [item]
    return sorted(glob.glob(item))


def _folder_images(folder: Path, kinds: Sequence[str], skip_suffix: str | None) -> list[Path]:
    """The images in a folder, without hidden files and earlier outputs.

    Why: ``._a.tif`` (macOS AppleDouble) and ``.partial`` files are not images, and a
    rerun into the same folder must not denoise ``a_denoised.tif`` again.
    """
    from .files import split_name

    def wanted(p: Path) -> bool:
        if p.name.startswith(".") or p.suffix.lower() not in kinds:
            return False
        return not (skip_suffix and split_name(p)[0].endswith(skip_suffix))

    return sorted(p for p in folder.iterdir() if wanted(p))


def _expand_inputs(
    inputs: Sequence[str], lazy: bool = False, skip_suffix: str | None = None
) -> tuple[list[Path], list[str]]:
    """Files, globs and folders (non-recursive) -> image files, plus what matched nothing.

    ``lazy``: ``.zarr`` folders count as images (the denoise command reads them chunk by chunk).
    ``skip_suffix``: in folders, names whose base ends with it are earlier outputs, skipped.
    """
    from .files import LAZY_SUFFIXES, SUFFIXES

    kinds = SUFFIXES + LAZY_SUFFIXES if lazy else SUFFIXES
    files: list[Path] = []
    missing: list[str] = []
    for item in inputs:
        matches = _matches(item)
        if not matches:
            missing.append(item)
        for m in matches:
            p = Path(m)
            if p.is_dir() and not (lazy and p.suffix.lower() in LAZY_SUFFIXES):
                files += _folder_images(p, kinds, skip_suffix)
            elif p.exists():
                files.append(p)
            else:
                missing.append(item)
    seen: set[Path] = set()
    unique = [f for f in files if not (f.resolve() in seen or seen.add(f.resolve()))]
    return unique, missing


def _cmd_denoise(args: argparse.Namespace) -> int:
    from .denoise_cmd import run

    return run(args)


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
            f"{m.name:20s} {m.kind:10s} {m.channels:>2d} {m.parameters:>9,d} "
            f"{m.receptive_field:>4d}  {where}: {m.description[:60]}"
        )
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import run_from_args

    return run_from_args(args)


def _split_pair(text: str) -> tuple[Path, Path]:
    """``noisy.tif:clean.tif`` -> two existing paths (the split that names two files)."""
    for i, ch in enumerate(text):
        if ch == ":" and Path(text[:i]).is_file() and Path(text[i + 1 :]).is_file():
            return Path(text[:i]), Path(text[i + 1 :])
    raise FileNotFoundError(f"--pairs {text!r}: expected NOISY:CLEAN naming two existing files")


def _source(path: Path):
    from .files import read_image_file
    from .finetune_data import SourceImage

    image = read_image_file(path)
    axis = image.channel_axis
    ndim = image.data.ndim
    rgb = axis is not None and axis % ndim == ndim - 1 and image.data.shape[axis] in (3, 4)
    return SourceImage(path.name, image.data, None if rgb else axis, rgb)


def _black_level_arg(text: str) -> str | float:
    """``--black-level``: a keyword kept as text, anything else read as a number."""
    from .config import ConfigError
    from .finetune_data import BLACK_LEVELS

    if text in BLACK_LEVELS:
        return text
    try:
        return float(text)
    except ValueError:
        raise ConfigError(
            f"--black-level {text!r}: give {', '.join(BLACK_LEVELS)} or a number"
        ) from None


def _cmd_finetune(args: argparse.Namespace) -> int:
    from .config import ConfigError, CorruptionConfig
    from .finetune import FinetuneSettings, finetune
    from .modelfile import ModelFileError
    from .train import _print_progress

    try:
        files, missing = _expand_inputs(args.inputs) if args.inputs else ([], [])
        if missing:
            raise FileNotFoundError(f"no such file or folder: {', '.join(missing)}")
        pairs = [_split_pair(p) for p in args.pairs or []]
        if pairs and (files or args.noisy_only):
            raise ConfigError("--pairs replaces IMAGES and --noisy-only; give one or the other")
        if not files and not pairs:
            raise ConfigError("no training images: give IMAGES or --pairs NOISY:CLEAN")
        mode = "pairs" if pairs else ("noisy" if args.noisy_only else "clean")
        if args.noisy_method and mode != "noisy":
            raise ConfigError("--noisy-method applies to --noisy-only training only")
        method = {"noisy_method": args.noisy_method} if args.noisy_method else {}
        corruption = CorruptionConfig(sigma_range=tuple(args.sigma)) if args.sigma else None
        settings = FinetuneSettings(
            name=args.name,
            mode=mode,
            base=None if args.new else args.base,
            architecture=args.new or "small",
            corruption=corruption or CorruptionConfig(),
            patch_size=args.patch,
            batch_size=args.batch,
            steps=args.steps,
            learning_rate=args.lr,
            black_level=_black_level_arg(args.black_level),
            tuned_weight=args.tuned_weight,
            seed=args.seed,
            **method,
        )
        images = [_source(n) for n, _ in pairs] if pairs else [_source(f) for f in files]
        targets = [_source(c) for _, c in pairs] or None
        result = finetune(
            settings,
            images,
            targets=targets,
            resume=args.resume,
            overwrite=args.overwrite,
            on_progress=_print_progress,
            max_seconds=args.max_minutes * 60 if args.max_minutes else None,
        )
    except (ConfigError, ValueError, FileNotFoundError, ModelFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    before = ", ".join(f"{k}: {v:.2f}" for k, v in result.val_psnr_initial.items())
    after = ", ".join(f"{k}: {v:.2f}" for k, v in result.val_psnr_best.items())
    what = "stopped" if result.stopped else "finished"
    print(f"{what} at step {result.steps_done}/{result.total_steps}")
    print(f"validation PSNR before: {before}; after: {after}")
    if not result.saved:
        print(
            f"nothing saved: stopped before the first validation (every "
            f"{result.recipe.training.val_every} steps); --resume continues the run"
        )
        return 0
    print(f"saved {result.name}: {result.model_path}")
    return 0


def _cmd_bench(args: argparse.Namespace) -> int:
    from .bench import main as bench_main

    return int(bench_main(args.bench_args) or 0)


def build_parser() -> argparse.ArgumentParser:
    """The command's parser (subcommands denoise, train, finetune, models, bench, export)."""
    parser = argparse.ArgumentParser(
        prog="napari-bfcnn", description="Bias-free CNN denoising from the shell."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    d = sub.add_parser("denoise", help="denoise image files (TIFF, PNG, JPEG, zarr) into a folder")
    from .denoise_cmd import add_arguments as denoise_arguments

    denoise_arguments(d)
    d.set_defaults(func=_cmd_denoise)

    from .train import build_parser as train_parser

    t = sub.add_parser("train", help="train or fine-tune a model from a recipe")
    train_parser(t)
    t.set_defaults(func=_cmd_train)

    f = sub.add_parser(
        "finetune",
        help="fine-tune a model on your own images and save it as a user model",
        description="Fine-tune a model (or train a new one) on image files. Clean images get "
        "synthetic noise; --noisy-only trains self-supervised (--noisy-method); --pairs uses "
        "registered noisy/clean acquisitions. The best validated model goes to the user-model "
        "folder; --noisy-only runs from a base model save instead the midpoint of the base "
        "and the last fine-tuned weights (--tuned-weight), unless it validates below the base.",
    )
    f.add_argument("inputs", nargs="*", metavar="IMAGES", help="files, globs or folders")
    f.add_argument("--name", required=True, help="name of the new model")
    f.add_argument("--base", default="gray", help="model name or .keras path to start from")
    f.add_argument("--new", choices=["tiny", "small", "medium"], help="train a new model instead")
    f.add_argument(
        "--noisy-only",
        action="store_true",
        help="IMAGES are noisy: self-supervised training (see --noisy-method)",
    )
    # finetune.NOISY_METHODS, spelt out: importing it here would load pydantic for every command
    f.add_argument(
        "--noisy-method",
        choices=["r2r", "n2n"],
        default=None,
        help="with --noisy-only: r2r (Recorrupted-to-Recorrupted, full resolution, "
        "Poisson-Gaussian noise estimated per image) or n2n (Neighbor2Neighbor, "
        "half-resolution sub-images, no noise model); default: "
        "the library's (FinetuneSettings.noisy_method)",
    )
    f.add_argument("--pairs", action="append", metavar="NOISY:CLEAN", help="a noisy/clean pair")
    f.add_argument(
        "--sigma",
        nargs=2,
        type=float,
        metavar=("LO", "HI"),
        help="Gaussian training noise range, 8-bit scale (default 0 75)",
    )
    f.add_argument("--steps", type=int, help="training steps (default: from the data size)")
    f.add_argument("--patch", type=int, help="patch size (default: 64 or less)")
    f.add_argument("--batch", type=int, help="batch size (default: 8)")
    f.add_argument("--lr", type=float, help="learning rate (default: 2e-4, new models 1e-3)")
    f.add_argument(
        "--black-level",
        default="camera",
        metavar="camera|auto|none|VALUE",
        help="black level subtracted from every training plane, as `denoise --offset` will: "
        "'camera' (default: estimated for 12/16-bit camera data, else none), 'auto', 'none' "
        "or a number in the data's units",
    )
    f.add_argument(
        "--tuned-weight",
        type=float,
        metavar="W",
        help="save (1 - W) x the base model's weights + W x the fine-tuned ones (WiSE-FT; "
        "default: 0.5 for --noisy-only runs from a base model, else 1)",
    )
    f.add_argument("--seed", type=int, default=0)
    f.add_argument("--resume", action="store_true", help="continue the stopped run of --name")
    f.add_argument("--overwrite", action="store_true", help="replace a user model of that name")
    f.add_argument(
        "--max-minutes",
        type=float,
        help="stop after this long and save as a finished run does (nothing before the first "
        "validation)",
    )
    f.set_defaults(func=_cmd_finetune)

    m = sub.add_parser("models", help="list bundled and user models")
    m.set_defaults(func=_cmd_models)

    b = sub.add_parser("bench", help="run the benchmark (arguments as python -m src_models.bench)")
    b.add_argument("bench_args", nargs=argparse.REMAINDER)
    b.set_defaults(func=_cmd_bench)

    from .export import add_export_parser  # light: TensorFlow loads only when an export runs

    add_export_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``napari-bfcnn`` console script."""
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:  # argparse's REMAINDER drops options that come first
        from .bench import main as bench_main

        return int(bench_main(argv[1:]) or 0)
    args = build_parser().parse_args(argv)
    return int(args.func(args))


if __name__ == "__main__":
    raise SystemExit(main())
