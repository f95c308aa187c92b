"""The microscopy section of the benchmark: run it, and its rows, table, plot and crops.

Why apart from :mod:`bench_micro`: that module holds the measurement (data, scores,
baselines and their cache); this one turns it into ``results.csv`` rows
(section "micro", no sigma), the markdown table shared by ``results.md`` and the
README block, a PSNR bar chart and side-by-side crops.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import numpy as np

from .bench_micro import (
    MICRO_SETS,
    PUBLISHED_MICRO,
    PUBLISHED_PREFIX,
    SIGMA_FACTORS,
    MicroSample,
    MicroScore,
    micro_baseline_label,
)
from .bench_report import KIND_ORDER, Row, _average_rows

__all__ = [
    "MICRO_PROTOCOL",
    "micro_markdown",
    "micro_rows",
    "micro_table",
    "plot_micro_psnr",
    "published_micro_rows",
    "run_micro_section",
    "run_sizes",
]

MICRO_PROTOCOL = (
    "Protocol: real fluorescence microscopy, one noisy frame against the average of many "
    "(FMD: 50 frames; W2S: 400 frames); every channel of a file is a gray image on the 8-bit "
    "scale. Each output is clipped to [0, 255], fitted as a·output + b to the clean image by "
    "least squares and clipped again, then scored: PSNR (peak 255) and SSIM (Gaussian window "
    'σ=1.5) of the fitted output, averaged over channel images; "plain" is the PSNR without '
    "the fit (FMD only: W2S stretched noisy and clean images separately). One-channel models "
    'get the noisy image with the black level estimated per plane (`offset="auto"`); colour '
    "models are left out (a gray image repeated into three channels carries identical noise "
    "in each, which they keep). \"microscopy (auto)\": per image `microscopy-correlated` "
    "where the noise estimate of the noisy image finds neighbouring pixels' noise correlated, "
    "else `microscopy` (the widget's and the CLI's choice). Baselines: BM3D and "
    "skimage NLM given the wavelet estimate of σ (skimage `estimate_sigma`); BM3D best of "
    "three σ per image: the best (with the clean image: an oracle) of BM3D at the estimate "
    f"{', '.join(f'×{f:g}' for f in SIGMA_FACTORS)} (the estimate is low on these images, "
    "whose dark background dominates it); BM3D + GAT: BM3D with σ=1 after the generalised "
    "Anscombe transform with gain, read noise and black level estimated from the image "
    "(`noise_model.estimate_poisson_gaussian`; BM3D with the estimated σ where that fails), "
    "then the closed-form unbiased inverse (Makitalo & Foi 2013). Published rows: other "
    "frames of the same kind of data, for orientation only."
)


# --------------------------------------------------------------------------- rows


def micro_rows(scores: Iterable[MicroScore], n_total: dict[str, int]) -> list[Row]:
    """Average per-image scores into "micro" rows, one per (dataset, method)."""
    return _average_rows(scores, n_total, "micro", ("dataset", "method", "kind"))


def published_micro_rows(datasets: Iterable[str]) -> list[Row]:
    """The published fitted PSNRs of :data:`PUBLISHED_MICRO` for the datasets in the run.

    Each is labelled ``"published: <label of the measured row>"``.
    """
    return [
        Row(
            section="micro",
            dataset=d,
            method=PUBLISHED_PREFIX + _published_name(key),
            kind="published",
            psnr=value,
            note="published on similar pairs (other frames)",
        )
        for d in datasets
        for key, value in PUBLISHED_MICRO.get(d, {}).items()
    ]


def _published_name(key: str) -> str:
    """Published rows' names: the measured row's, but "NLM" (their NLM need not be skimage's)."""
    return {"noisy": "noisy input", "nlm": "NLM"}.get(key) or micro_baseline_label(key)


# --------------------------------------------------------------------------- markdown


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def micro_table(rows: Sequence[Row], methods: Iterable[str] | None = None) -> str:
    """Markdown table: methods as rows; fitted PSNR, plain PSNR (FMD) and SSIM per set.

    The best value of each column among complete measured rows (not the noisy input,
    not published, not the oracle that picks BM3D's σ with the clean image) is bold;
    rows covering fewer images say ``(n/N images)``. ``methods`` keeps those methods
    (and the noisy input) only.
    """
    oracle = micro_baseline_label("bm3d_best")
    wanted = None if methods is None else set(methods)
    m = [
        r
        for r in rows
        if r.section == "micro" and (wanted is None or r.method in wanted or r.kind == "noisy")
    ]
    datasets = [d for d in MICRO_SETS if any(r.dataset == d for r in m)]
    datasets += [d for d in dict.fromkeys(r.dataset for r in m) if d not in datasets]
    if not datasets:
        return ""
    cols: list[tuple[str, str, str]] = []  # (dataset, field, heading)
    for d in datasets:
        cols.append((d, "psnr", f"{d} PSNR fit (dB)"))
        if any(r.dataset == d and r.psnr_plain is not None for r in m):
            cols.append((d, "psnr_plain", f"{d} PSNR plain (dB)"))
        cols.append((d, "ssim", f"{d} SSIM fit"))
    order = {k: i for i, k in enumerate(dict.fromkeys((r.kind, r.method) for r in m))}
    keys = sorted(order, key=lambda k: (_rank(k[0]), order[k]))
    cell: dict[tuple, Row] = {(r.kind, r.method, r.dataset): r for r in m}

    def complete(r: Row) -> bool:
        return (
            r.kind not in ("noisy", "published")
            and r.method != oracle
            and r.n_images == r.n_total
        )

    best = {}
    for d, field, _ in cols:
        vals = [getattr(r, field) for r in m if r.dataset == d and complete(r)]
        best[(d, field)] = max((v for v in vals if v is not None), default=None)
    lines = [
        "| method | " + " | ".join(h for _, _, h in cols) + " |",
        "|---|" + "---:|" * len(cols),
    ]
    for kind, method in keys:
        label = "noisy input" if kind == "noisy" else method
        if method == oracle and kind != "published":
            label += ", oracle: σ picked with the clean image"
        partial = sorted(
            {
                (r.n_images, r.n_total)
                for d in datasets
                if (r := cell.get((kind, method, d))) is not None
                and r.n_total
                and r.n_images != r.n_total
            }
        )
        if partial:
            label += " (" + ", ".join(f"{n}/{t}" for n, t in partial) + " images)"
        cells = []
        for d, field, _ in cols:
            r = cell.get((kind, method, d))
            v = None if r is None else getattr(r, field)
            digits = 4 if field == "ssim" else 2
            txt = _fmt(v, digits)
            b = best[(d, field)]
            if (
                v is not None
                and b is not None
                and complete(r)
                and round(v, digits) == round(b, digits)
            ):
                txt = f"**{txt}**"
            cells.append(txt)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def run_sizes(meta: dict) -> str:
    """ "Channel images: FMD 7, W2S 30." from a run's ``meta.json``."""
    sets = meta.get("micro", {})
    return "Channel images: " + ", ".join(f"{d} {n}" for d, n in sets.items()) + "."


def micro_markdown(rows: Sequence[Row], meta: dict) -> str:
    """The "Microscopy" part of ``results.md``: protocol, table and baseline coverage."""
    table = micro_table(rows)
    if not table:
        return ""
    cache = meta.get("micro_baselines_csv", "src_models/bench_baselines_micro.csv")
    out = ["## Microscopy (FMD, W2S)", "", MICRO_PROTOCOL, "", run_sizes(meta), "", table, ""]
    base = [r for r in rows if r.section == "micro" and r.kind == "baseline"]
    cov = []
    for d in meta.get("micro", {}):
        mine = [f"{r.method} {r.n_images}/{r.n_total}" for r in base if r.dataset == d]
        cov.append(f"{d}: " + (", ".join(mine) if mine else "none cached"))
    out += [
        f"Baselines are read from `{cache}` (filled by `--compute-baselines`); images covered: "
        + "; ".join(cov)
        + ".",
        "",
    ]
    return "\n".join(out)


# --------------------------------------------------------------------------- figures


def plot_micro_psnr(rows: Sequence[Row], path: str | Path) -> Path | None:
    """Grouped bars of the fitted PSNR per method, one group per dataset (published as marks)."""
    from .bench_figures import _pyplot

    m = [r for r in rows if r.section == "micro" and r.psnr is not None]
    if not m:
        return None
    datasets = list(dict.fromkeys(r.dataset for r in m))
    measured = [k for k in dict.fromkeys((r.kind, r.method) for r in m) if k[0] != "published"]
    measured.sort(key=lambda k: _rank(k[0]))
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6.0, 2.6 * len(datasets) + 0.6 * len(measured)), 4.8))
    width = 0.8 / max(len(measured), 1)
    cmap = plt.get_cmap("tab10")
    for i, (kind, method) in enumerate(measured):
        xs, ys = [], []
        for j, d in enumerate(datasets):
            r = next((r for r in m if (r.kind, r.method, r.dataset) == (kind, method, d)), None)
            if r is not None:
                xs.append(j - 0.4 + width * (i + 0.5))
                ys.append(r.psnr)
        label = "noisy input" if kind == "noisy" else method
        color = "0.6" if kind == "noisy" else cmap(i % 10)
        ax.bar(xs, ys, width * 0.9, label=label, color=color)
    shown = False
    for r in m:  # a published figure as a black bar over the bar of its measured method
        if r.kind != "published" or r.dataset not in datasets:
            continue
        name = r.method.removeprefix(PUBLISHED_PREFIX)
        keys = [k for k in PUBLISHED_MICRO.get(r.dataset, {}) if _published_name(k) == name]
        if not keys:
            continue
        key = keys[0]
        want = "noisy" if key == "noisy" else micro_baseline_label(key)
        match = [i for i, (kind, method) in enumerate(measured) if want in (kind, method)]
        if not match:
            continue
        x = datasets.index(r.dataset) - 0.4 + width * (match[0] + 0.5)
        ax.hlines(r.psnr, x - width * 0.5, x + width * 0.5, colors="k", linewidth=2.5)
        shown = True
    if shown:
        ax.plot([], [], "k-", linewidth=2.5, label="published figure (similar pairs)")
    lows = [r.psnr for r in m]
    ax.set_ylim(max(0.0, min(lows) - 3.0), max(lows) + 1.5)
    ax.set_xticks(range(len(datasets)), datasets)
    ax.set(ylabel="PSNR after affine fit (dB)", title="Microscopy: PSNR per method")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def micro_crops(
    kept: dict, cache: dict, samples: dict, out: Path, crop: int, margin: int = 32
) -> list[Path]:
    """Crops noisy / models / BM3D / clean of the kept image of each set, after the fit.

    BM3D runs on the crop plus ``margin`` pixels at the oracle's sigma when the
    cache has it, else at the estimated sigma (skipped without the bm3d package).
    """
    from .bench_figures import crop_box, plot_crops
    from .bench_micro import best_sigma, fitted

    written = []
    for (dataset, image), outputs in kept.items():
        clean, noisy = outputs["clean"], outputs["noisy"]
        box = crop_box(clean.shape, crop)
        panels = [(k, fitted(v, clean)[box]) for k, v in outputs.items() if k != "clean"]
        bm3d = _bm3d_panel(noisy, clean, box, best_sigma(cache, samples[(dataset, image)]), margin)
        if bm3d is not None:
            panels.append(bm3d)
        path = out / f"crops_micro_{dataset}.png"
        plot_crops(
            panels,
            clean[box],
            path,
            title=f"{dataset} {image} (after the affine fit; PSNR on the crop; "
            "white: the clean crop's 99.5th percentile)",
            display_max=float(np.percentile(clean[box], 99.5)),
        )
        written.append(path)
    return written


def _bm3d_panel(noisy, clean, box, sigma: float | None, margin: int):
    try:
        import bm3d  # noqa: F401
    except ImportError:
        return None
    from .bench_micro import _bm3d, _est_sigma, fitted

    label = "BM3D (best σ)"
    if sigma is None:
        sigma, label = _est_sigma(noisy), "BM3D (est. σ)"
    ys, xs = box
    h, w = noisy.shape
    y0, y1 = max(0, ys.start - margin), min(h, ys.stop + margin)
    x0, x1 = max(0, xs.start - margin), min(w, xs.stop + margin)
    est = fitted(_bm3d(noisy[y0:y1, x0:x1], sigma), clean[y0:y1, x0:x1])  # fit on this part
    return f"{label} σ={sigma:.1f}", est[ys.start - y0 : ys.stop - y0, xs.start - x0 : xs.stop - x0]


# --------------------------------------------------------------------------- section


def run_micro_section(
    data: Path,
    denoisers: Sequence,
    out: Path,
    *,
    limit: int | None = None,
    cache_path: Path,
    compute: bool = False,
    workers: int = 1,
    command: str = "",
    crop: int = 256,
    crop_images: Sequence[str] = (),
    log: Callable[[str], None] | None = None,
    tta: int = 1,
) -> tuple[list[Row], dict[str, int]]:
    """Run the microscopy section: baselines (cache), models, rows, plot and crops.

    Parameters
    ----------
    data : Path
        Shared data folder (``eval/FMD``, ``eval/W2S``); a missing set is skipped.
    denoisers : sequence of Denoiser
    out : Path
        Output folder: ``per_image_micro.csv``, ``psnr_micro.png``, ``crops_micro_<set>.png``.
    limit : int, optional
        First channel images per set.
    cache_path : Path
        The microscopy baseline cache.
    compute : bool
        Compute missing baselines first (``--compute-baselines``).
    workers, command
        For :func:`compute_micro_baselines`.
    crop : int
        Crop side of the figures.
    crop_images : sequence of str
        Channel images (names as in the tables) whose crops the figures show; a set
        without one in the run shows its first image.
    tta : int
        > 1: also the row "microscopy (auto) (TTA ×N)", the widget's choice with
        test-time augmentation.

    Returns
    -------
    rows : list of Row
    counts : dict
        Channel images per set in this run.
    """
    import csv
    from dataclasses import asdict

    from .bench_micro import (
        AUTO_MICROSCOPY,
        auto_microscopy_runner,
        cached_micro_scores,
        compute_micro_baselines,
        load_pair,
        micro_samples,
        model_runner,
        read_micro_cache,
        run_micro,
        stale_vst_rows,
        vst_params,
    )
    from .registry import MICROSCOPY_CORRELATED_MODEL, MICROSCOPY_MODEL

    samples: list[MicroSample] = []
    counts: dict[str, int] = {}
    for d in MICRO_SETS:
        if not (Path(data) / "eval" / d).is_dir():
            if log is not None:
                log(f"[micro] no {Path(data) / 'eval' / d}: {d} skipped")
            continue
        got = micro_samples(data, d, limit)
        samples += got
        counts[d] = len(got)
    # the current estimator's BM3D + GAT parameters, once: stale rows are found before and
    # after computing (each needs a load and a noise estimate per image)
    vst_now = {(s.dataset, s.name): vst_params(load_pair(s)[0]) for s in samples}
    if compute:
        if log is not None:
            log(f"[micro] computing missing baselines into {cache_path} ({workers} worker(s))")
        outdated = stale_vst_rows(samples, read_micro_cache(cache_path), vst_now)
        added = compute_micro_baselines(
            samples, cache_path, command, workers=workers, log=log, outdated=outdated
        )
        if log is not None:
            log(f"[micro] added {added} baseline rows")
    first = {}
    for s in samples:
        if s.name in crop_images:
            first[s.dataset] = s.name
    for s in samples:
        first.setdefault(s.dataset, s.name)
    methods = [(den.name, model_runner(den)) for den in denoisers]
    by_name = {den.name: den for den in denoisers}
    if MICROSCOPY_MODEL in by_name and MICROSCOPY_CORRELATED_MODEL in by_name:
        white, correlated = by_name[MICROSCOPY_MODEL], by_name[MICROSCOPY_CORRELATED_MODEL]
        methods.append((AUTO_MICROSCOPY, auto_microscopy_runner(white, correlated)))
        if tta > 1:
            from .bench_quality import tta_label

            methods.append(
                (tta_label(AUTO_MICROSCOPY, tta), auto_microscopy_runner(white, correlated, tta))
            )
    scores, kept = run_micro(
        samples, methods, log=log, keep=lambda s: first.get(s.dataset) == s.name
    )
    crcs = {(s.dataset, s.image): s.input_crc for s in scores if s.kind == "noisy"}
    cache = read_micro_cache(cache_path)
    scores += cached_micro_scores(
        samples, cache, crcs, warn=log, outdated=stale_vst_rows(samples, cache, vst_now)
    )
    with open(out / "per_image_micro.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(MicroScore.__dataclass_fields__))
        w.writeheader()
        for s in scores:
            w.writerow(asdict(s))
    rows = micro_rows(scores, counts) + published_micro_rows(counts)
    plot_micro_psnr(rows, out / "psnr_micro.png")
    by_key = {(s.dataset, s.name): s for s in samples}
    micro_crops(kept, cache, by_key, out, crop)
    return rows, counts
