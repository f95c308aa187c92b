"""The benchmark: ``python -m src_models.bench --data ../shared/data --out DIR [options]``.

Why one command: the README tables, the model cards and the CI smoke test all come
from the same run, which records its command line, date and hardware next to its
numbers. Quality (PSNR/SSIM on BSD68, Set12, CBSD68, McMaster at nine noise levels,
identical seeded noisy inputs for every method), speed (Mpix/s) and peak memory
(an 8192² image in a fresh process) are measured for our models, optionally the
paper's BF-DnCNN (``--reference``), and BM3D/CBM3D and NLM read from a committed
cache (``--compute-baselines`` fills it). ``--quick`` runs a small subset for CI.
``--micro`` (or ``micro`` in ``--sections``) adds real fluorescence microscopy
(FMD, W2S; :mod:`src_models.bench_micro`), scored after an affine fit.

Outputs in ``--out``: ``results.csv`` (long format), ``per_image.csv``,
``results.md``, ``meta.json``, ``psnr_vs_sigma_<dataset>.png`` and
``crops_<dataset>.png``; with microscopy also ``per_image_micro.csv``,
``psnr_micro.png`` and ``crops_micro_<set>.png``.
"""

from __future__ import annotations

import argparse
import csv
import datetime as _dt
import json
import os
import platform
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path

__all__ = ["hardware_summary", "main", "run"]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_DATA = ROOT.parent / "shared" / "data"
CROP_SIGMA = 25.0
QUICK_IMAGES = 3
QUICK_MICRO_IMAGES = 1  # channel images per microscopy set in --quick
SECTIONS = ("quality", "speed", "memory", "micro")
CROP_MARGIN = 64  # beyond BM3D's reach (search window plus block, both stages): crop = full


def _log(msg: str) -> None:
    print(f"{time.strftime('%H:%M:%S')} {msg}", file=sys.stderr, flush=True)


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def hardware_summary() -> str:
    """CPU count and model, memory, accelerator and Keras backend, for the results header."""
    import keras

    parts = [f"{os.cpu_count()} CPU cores ({_cpu_model()})"]
    try:
        pages = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        parts.append(f"{pages / 2**30:.0f} GiB RAM")
    except (ValueError, OSError, AttributeError):
        pass
    backend = keras.backend.backend()
    gpu = "no GPU"
    if backend == "tensorflow":
        import tensorflow as tf

        gpus = tf.config.list_physical_devices("GPU")
        if gpus:
            gpu = f"{len(gpus)} GPU(s)"
    elif backend == "jax":
        import jax

        devs = [d for d in jax.devices() if d.platform != "cpu"]
        if devs:
            gpu = f"{len(devs)}x {devs[0].device_kind}"
    parts += [gpu, f"keras {keras.__version__} on {backend}", f"Python {platform.python_version()}"]
    return ", ".join(parts)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m src_models.bench",
        description="Benchmark denoisers: PSNR/SSIM on standard test sets, speed and memory.",
    )
    p.add_argument("--data", default=str(DEFAULT_DATA), help="shared data folder (holds eval/)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument(
        "--models",
        nargs="*",
        default=None,
        help="model names or .keras paths (default: the bundled models)",
    )
    p.add_argument(
        "--quick",
        action="store_true",
        help=f"CI subset: {QUICK_IMAGES} images per set, sigma 5/25/50, 512² speed only, "
        "no memory run",
    )
    p.add_argument(
        "--reference",
        action="store_true",
        help="add the paper's BF-DnCNN ([0,55] and [0,100]) on the gray sets",
    )
    p.add_argument(
        "--reference-dir",
        default=None,
        help="the bf_dncnn_paper anchor folder (default: <data>/../anchors/bf_dncnn_paper)",
    )
    p.add_argument(
        "--baselines-csv",
        default=None,
        help="baseline cache (default: src_models/bench_baselines.csv)",
    )
    p.add_argument(
        "--reference-csv",
        default=None,
        help="cache of the --reference rows (default: src_models/bench_reference.csv); "
        "a reference whose rows are not all there is run and its rows appended",
    )
    p.add_argument(
        "--compute-baselines",
        action="store_true",
        help="compute the baselines missing from the cache (slow: BM3D ~35 us/pixel)",
    )
    p.add_argument(
        "--micro-baselines-csv",
        default=None,
        help="microscopy baseline cache (default: src_models/bench_baselines_micro.csv)",
    )
    p.add_argument("--workers", type=int, default=1, help="processes for --compute-baselines")
    p.add_argument(
        "--baselines",
        default="bm3d,bm3d_est,nlm",
        help="which baselines --compute-baselines fills (default: all three)",
    )
    p.add_argument(
        "--sections",
        default="quality,speed,memory",
        help="comma-separated subset of quality,speed,memory,micro",
    )
    p.add_argument(
        "--micro-crop",
        action="append",
        default=[],
        metavar="IMAGE",
        help="channel image whose crop the microscopy figure of its set shows, e.g. "
        "'WideField_BPAE_RGB.png[0]' (repeatable; default: each set's first image)",
    )
    p.add_argument(
        "--micro",
        action="store_true",
        help="add the microscopy section (FMD, W2S real noisy/clean pairs)",
    )
    p.add_argument(
        "--datasets",
        default=None,
        help="comma-separated test sets (default: BSD68,Set12,CBSD68,McMaster)",
    )
    p.add_argument("--sigmas", default=None, help="comma-separated noise sigmas (8-bit scale)")
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="first N images of each set (microscopy: channel images)",
    )
    p.add_argument(
        "--gray-on-color",
        action="store_true",
        help="also run gray models channel by channel on the colour sets",
    )
    p.add_argument(
        "--tta-models",
        default="gray,microscopy (auto)",
        help="rows that get a twin with 8x test-time augmentation: model names, and "
        "'microscopy (auto)' for the microscopy section's automatic choice (comma-separated; "
        "'' for none; default: %(default)s; 'color' adds about 80 min on 2 CPU cores)",
    )
    p.add_argument("--memory-size", type=int, default=8192, help="side of the memory-run image")
    p.add_argument(
        "--crop", type=int, default=None, help="crop side of the figures (256; quick 128)"
    )
    p.add_argument(
        "--write-docs",
        action="store_true",
        help="write the tables into README.md and src_models/pretrained/<name>.md",
    )
    p.add_argument("--readme", default=str(ROOT / "README.md"))
    p.add_argument("--cards-dir", default=str(ROOT / "src_models" / "pretrained"))
    return p


def _csv_list(text: str | None, cast=str) -> list | None:
    if text is None:
        return None
    return [cast(t.strip()) for t in text.split(",") if t.strip()]


def _model_file(spec: str) -> str:
    """A model spec as a file path, so a child process loads the very same file."""
    from .registry import list_models

    p = Path(spec).expanduser()
    if p.is_file():
        return str(p.resolve())
    for m in list_models():
        if m.name == spec and m.error is None:
            return str(m.path.resolve())
    return spec


def _load_models(specs: list[str]) -> list[tuple[str, object]]:
    from .bench_speed import load_denoiser

    out = []
    for spec in specs:
        path = _model_file(spec)
        den = load_denoiser(path)
        if den.channels not in (1, 3):
            _log(f"skipping {den.name}: {den.channels}-channel models have no test set")
            continue
        _check_receptive_field(den)
        out.append((path, den))
    return out


def _check_receptive_field(den) -> None:
    """Warn when a card's receptive field is smaller than measured: its tiles would show seams."""
    from .architectures import receptive_field

    measured = receptive_field(den.model, int(den.card.size_multiple))
    if measured > den.card.receptive_field:
        _log(
            f"WARNING: {den.name}'s card says receptive_field={den.card.receptive_field} but "
            f"{measured} is measured: images tiled with it (sides > 1024 px) get seams; "
            "fix the card"
        )


def run(argv: list[str] | None = None) -> Path:
    """Run the benchmark with command-line arguments; returns the output folder."""
    from . import bench_quality as bq
    from .bench_baselines import DEFAULT_CACHE, cached_scores, compute_baselines, read_cache
    from .bench_reference import DEFAULT_REFERENCE_CACHE, file_sha256
    from .bench_report import (
        paired_rows,
        published_rows,
        results_markdown,
        summarise,
        write_results,
    )

    args = _parser().parse_args(argv)
    argv = sys.argv[1:] if argv is None else list(argv)
    sections = set(_csv_list(args.sections)) | ({"micro"} if args.micro else set())
    unknown = sections - set(SECTIONS)
    if unknown:
        raise SystemExit(
            f"--sections: unknown section(s) {sorted(unknown)}; expected {', '.join(SECTIONS)}"
        )
    if args.write_docs and args.quick:
        raise SystemExit("--write-docs: a --quick run's subset numbers do not go into the docs")
    if args.write_docs and not Path(args.readme).is_file():
        raise SystemExit(f"--write-docs: README not found: {args.readme}")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    datasets = _csv_list(args.datasets) or list(bq.GRAY_SETS + bq.COLOR_SETS)
    sigmas = _csv_list(args.sigmas, float) or list(bq.QUICK_SIGMAS if args.quick else bq.SIGMAS)
    limit = args.limit if args.limit is not None else (QUICK_IMAGES if args.quick else None)
    crop = args.crop or (128 if args.quick else 256)
    cache_path = Path(args.baselines_csv) if args.baselines_csv else DEFAULT_CACHE
    command = "python -m src_models.bench " + shlex.join(argv)

    # ------------------------------------------------------------------ methods
    if args.models is None:
        from .registry import list_models

        specs = [m.name for m in list_models() if m.builtin and m.error is None]
    else:
        specs = list(args.models)
    models = _load_models(specs)
    refs = []
    if args.reference:
        from .reference import reference_files

        ref_dir = (
            Path(args.reference_dir)
            if args.reference_dir
            else data.parent / "anchors" / "bf_dncnn_paper"
        )
        files = reference_files(ref_dir)
        if not files:
            raise SystemExit(f"--reference: no BF-DnCNN weight files in {ref_dir}")
        refs = [(f"reference:{f}", _load_reference(f)) for f in files]
    methods = [bq.denoiser_method(den, color=den.channels == 3) for _, den in models]
    tta_names = set(_csv_list(args.tta_models) or [])
    methods += [
        bq.denoiser_method(den, color=den.channels == 3, tta=bq.TTA)
        for _, den in models
        if den.name in tta_names
    ]
    if args.gray_on_color:
        methods += [
            bq.denoiser_method(
                den, color=True, label=f"{den.name} (per channel)", kind="model-per-channel"
            )
            for _, den in models
            if den.channels == 1
        ]
    ref_methods = [bq.denoiser_method(den, color=False, kind="reference") for _, den in refs]
    ref_sha = {
        m.label: file_sha256(spec.removeprefix("reference:"))
        for m, (spec, _) in zip(ref_methods, refs, strict=True)
    }
    ref_cache_path = Path(args.reference_csv) if args.reference_csv else DEFAULT_REFERENCE_CACHE
    _log(f"methods: {', '.join(m.label for m in methods + ref_methods) or '(none)'}")

    rows = []
    meta_models = {}
    for spec, den in models + refs:
        kind = "reference" if spec.startswith("reference:") else "model"
        meta_models[den.name] = {
            "spec": spec,
            "kind": kind,
            "card": den.card.model_dump(mode="json"),
        }

    # ------------------------------------------------------------------ quality
    samples = (
        {d: bq.dataset_samples(data, d, limit) for d in datasets} if "quality" in sections else {}
    )
    if samples:
        all_samples = [s for d in datasets for s in samples[d]]
        if args.compute_baselines:
            _log(f"computing missing baselines into {cache_path} ({args.workers} worker(s))")
            added = compute_baselines(
                all_samples,
                sigmas,
                cache_path,
                workers=args.workers,
                log=_log,
                methods=[m.strip() for m in args.baselines.split(",") if m.strip()],
                provenance=command,
            )
            _log(f"added {added} baseline rows")
        first = {d: samples[d][0].name for d in datasets if samples[d]}
        keep_sigma = CROP_SIGMA if CROP_SIGMA in sigmas else None

        def keep(sample, sigma) -> bool:
            return sigma == keep_sigma and first.get(sample.dataset) == sample.name

        scores, kept = bq.run_quality(all_samples, sigmas, methods, log=_log, keep=keep)
        if keep_sigma is None:  # the crops are always at sigma 25
            extra = [samples[d][0] for d in datasets if samples[d]]
            _, kept = bq.run_quality(extra, [CROP_SIGMA], methods, keep=lambda s, g: True)
        crcs = {(s.dataset, s.image, s.sigma): s.input_crc for s in scores if s.kind == "noisy"}
        scores += cached_scores(all_samples, sigmas, read_cache(cache_path), crcs, warn=_log)
        if ref_methods:
            ref_scores, ref_kept = _reference_scores(
                ref_methods, ref_sha, ref_cache_path, all_samples, sigmas, crcs, keep, samples
            )
            scores += ref_scores
            for key, outputs in ref_kept.items():
                kept.setdefault(key, {}).update(outputs)
        _write_per_image(scores, out / "per_image.csv")
        n_total = {d: len(samples[d]) for d in datasets}
        rows += summarise(scores, n_total)
        rows += paired_rows(scores, n_total)
        rows += published_rows(datasets, sigmas)
        _figures(rows, kept, datasets, out, crop)

    # ------------------------------------------------------------------ microscopy
    micro_counts: dict[str, int] = {}
    micro_cache = None
    if "micro" in sections:
        from .bench_micro import AUTO_MICROSCOPY, MICRO_CACHE
        from .bench_micro_report import run_micro_section

        micro_cache = Path(args.micro_baselines_csv) if args.micro_baselines_csv else MICRO_CACHE
        gray = [den for _, den in models if den.channels == 1]
        for _, den in models:
            if den.channels != 1:  # the gray image repeated: identical noise in every channel
                _log(f"[micro] skipping {den.name}: colour models do not denoise gray channels")
        micro_rows, micro_counts = run_micro_section(
            data,
            gray,
            out,
            limit=args.limit
            if args.limit is not None
            else (QUICK_MICRO_IMAGES if args.quick else None),
            cache_path=micro_cache,
            compute=args.compute_baselines,
            workers=args.workers,
            command=command,
            crop=crop,
            crop_images=args.micro_crop,
            log=_log,
            tta=bq.TTA if AUTO_MICROSCOPY in tta_names else 1,
        )
        rows += micro_rows

    # ------------------------------------------------------------------ speed and memory
    if "speed" in sections and (models or refs):
        from .bench_speed import QUICK_SHAPES, SPEED_SHAPES, measure_speed

        shapes, repeats = (QUICK_SHAPES, 1) if args.quick else (SPEED_SHAPES, 3)
        measured = measure_speed([den for _, den in models], shapes, repeats=repeats, log=_log)
        # the paper's models run at ~0.05 Mpix/s whatever the size: the small image says it,
        # the large ones would add ten minutes to every run
        measured += measure_speed([den for _, den in refs], QUICK_SHAPES, repeats=repeats, log=_log)
        for r in measured:
            rows.append(_speed_row("speed", r))
    if "memory" in sections and not args.quick:
        from .bench_speed import measure_memory

        # the paper's models are yardsticks of quality and speed, not shipped: no memory run
        # (a full-resolution 20x64 DnCNN takes about 20 min on an 8192^2 image on 2 cores)
        for spec, den in models:
            _log(f"[memory] {den.name} on {args.memory_size}² in a subprocess")
            try:
                r = measure_memory(spec, args.memory_size)
            except (RuntimeError, OSError) as err:
                _log(f"[memory] {den.name} failed: {err}")
                continue
            r["method"] = den.name
            rows.append(_speed_row("memory", r))
            _log(f"[memory] {den.name}: peak {r['peak_rss_mb']:.0f} MiB, {r['mpix_s']:.3f} Mpix/s")
        micro = [spec for spec, den in models if den.name == "microscopy"]
        if micro:  # a camera stack: 32 planes of 2048^2 uint16, as in the microscopy issue
            _log("[memory] microscopy on a 32x2048² uint16 stack in a subprocess")
            try:
                r = measure_memory(micro[0], 2048, planes=32, dtype="uint16")
            except (RuntimeError, OSError) as err:
                _log(f"[memory] microscopy stack failed: {err}")
            else:
                r["method"] = "microscopy (uint16 stack)"
                rows.append(_speed_row("memory", r))
                _log(f"[memory] {r['method']}: peak {r['peak_rss_mb']:.0f} MiB")
        from .bench_speed import measure_dask_memory

        gray = [spec for spec, den in models if den.name == "gray"]
        for workers in (0, 2) if gray else ():  # out of core: the default model on dask
            try:
                r = measure_dask_memory(gray[0], args.memory_size, workers)
            except (RuntimeError, OSError) as err:
                _log(f"[memory] dask with {workers} workers failed: {err}")
                continue
            rows.append(_speed_row("memory", r))
            _log(
                f"[memory] {r['method']}: peak {r['peak_rss_mb']:.0f} MiB, {r['mpix_s']:.3f} Mpix/s"
            )

    # ------------------------------------------------------------------ outputs
    meta = {
        "command": command,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        "hardware": hardware_summary(),
        "quick": bool(args.quick),
        "sigmas": sigmas,
        "datasets": {d: len(s) for d, s in samples.items()},
        "baselines_csv": _shown_path(cache_path),
        "reference_csv": _shown_path(ref_cache_path) if refs else "",
        "micro": micro_counts,
        "micro_baselines_csv": _shown_path(micro_cache) if micro_cache else "",
        "models": meta_models,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=1))
    write_results(rows, out / "results.csv")
    (out / "results.md").write_text(results_markdown(rows, meta))
    _log(f"wrote {out / 'results.md'}")
    if args.write_docs:
        from .bench_docs import update_docs

        for path in update_docs(out, args.readme, args.cards_dir):
            _log(f"wrote {path}")
    return out


def _shown_path(path: Path) -> str:
    """A path relative to the repository root when inside it (docs must not name this machine)."""
    try:
        return str(path.resolve().relative_to(ROOT))
    except ValueError:
        return str(path)


def _reference_scores(methods, sha_by_label, cache_path, samples, sigmas, crcs, keep, by_set):
    """The reference rows: from the cache when complete for this run, else computed and cached.

    Returns the scores and the kept outputs for the crop figures (for a cached
    reference only the crop images are denoised: a few seconds, not half an hour).
    """
    from . import bench_quality as bq
    from .bench_reference import (
        append_reference_rows,
        cached_reference_scores,
        read_reference_cache,
    )

    cache = read_reference_cache(cache_path)
    scores, kept = [], {}
    for m in methods:
        sha = sha_by_label[m.label]
        cached = cached_reference_scores(samples, sigmas, m.label, sha, cache, crcs)
        outputs_kept: dict = {}
        if cached is not None:
            _log(f"{m.label}: {len(cached)} rows read from {_shown_path(cache_path)}")
            scores += cached
        else:
            _log(f"{m.label}: computing its rows (not all cached in {_shown_path(cache_path)})")
            computed, outputs_kept = bq.run_quality(samples, sigmas, [m], log=_log, keep=keep)
            mine = [s for s in computed if s.kind == "reference"]
            added = append_reference_rows(cache_path, mine, sha_by_label)
            _log(f"{m.label}: {added} rows added to {_shown_path(cache_path)}")
            scores += mine
        if not outputs_kept:  # cached, or the run's sigmas miss the crops' sigma: the crops only
            firsts = [v[0] for v in by_set.values() if v and not v[0].color]
            _, outputs_kept = bq.run_quality(firsts, [CROP_SIGMA], [m], keep=lambda s, g: True)
        for key, outputs in outputs_kept.items():
            if m.label in outputs:
                kept.setdefault(key, {})[m.label] = outputs[m.label]
    return scores, kept


def _load_reference(path: Path):
    from .reference import load_reference

    return load_reference(path)


def _speed_row(section: str, r: dict):
    from .bench_report import Row

    return Row(
        section=section,
        method=r["method"],
        kind="speed",
        shape=r["shape"],
        channels=r["channels"],
        seconds=r["seconds"],
        mpix_s=r["mpix_s"],
        peak_rss_mb=r.get("peak_rss_mb"),
        loaded_rss_mb=r.get("loaded_rss_mb"),
        note="" if section == "speed" else "one cold call in a fresh process",
    )


def _write_per_image(scores, path: Path) -> None:
    with open(path, "w", newline="") as f:
        w = None
        for s in scores:
            d = asdict(s)
            if w is None:
                w = csv.DictWriter(f, fieldnames=list(d))
                w.writeheader()
            w.writerow(d)


def _figures(rows, kept: dict, datasets: list[str], out: Path, crop: int) -> None:
    """PSNR-vs-sigma plots, and the crops of the first image of each set at sigma 25."""
    from .bench_figures import crop_box, plot_crops, plot_psnr_vs_sigma

    for d in datasets:
        plot_psnr_vs_sigma(rows, d, out / f"psnr_vs_sigma_{d}.png")
    for (dataset, image, sigma), outputs in kept.items():
        if len(outputs) == 2:  # no model ran on this set: nothing to compare
            continue
        clean, noisy = outputs["clean"], outputs["noisy"]
        box = crop_box(clean.shape, crop)
        panels = [("noisy", noisy[box])]
        panels += [(k, v[box]) for k, v in outputs.items() if k not in ("clean", "noisy")]
        bm3d = _bm3d_crop(noisy, sigma, box, clean.ndim == 3)
        if bm3d is not None:
            panels.append(bm3d)
        plot_crops(
            panels,
            clean[box],
            out / f"crops_{dataset}.png",
            title=f"{dataset} {image}, σ={sigma:g} (PSNR on the crop)",
        )


def _bm3d_crop(noisy, sigma: float, box, color: bool):
    """BM3D on the crop plus a margin (cheap), cut to the crop; None without the bm3d package."""
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return None
    from .bench_baselines import baseline_label, run_baseline

    ys, xs = box
    h, w = noisy.shape[:2]
    y0, y1 = max(0, ys.start - CROP_MARGIN), min(h, ys.stop + CROP_MARGIN)
    x0, x1 = max(0, xs.start - CROP_MARGIN), min(w, xs.stop + CROP_MARGIN)
    est = run_baseline("bm3d", noisy[y0:y1, x0:x1], sigma, color)
    cut = est[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]
    return baseline_label("bm3d", color), cut


def main(argv: list[str] | None = None) -> int:
    """Console entry point."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    run(argv)
    return 0


if __name__ == "__main__":
    sys.exit(main())
