"""Benchmark outputs: the long ``results.csv`` table and the markdown tables of ``results.md``.

Why long format: one measurement per line (section, dataset, method, sigma, ...)
is easy to filter, plot and diff between runs, and the docs are generated from
it (:mod:`src_models.bench_docs`), never typed by hand.
"""

from __future__ import annotations

import csv
import math
import statistics
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, fields
from pathlib import Path

__all__ = [
    "KIND_ORDER",
    "PROTOCOL",
    "PUBLISHED",
    "SPEED_NOTE",
    "Row",
    "dataset_title",
    "paired_rows",
    "paired_section",
    "published_rows",
    "quality_table",
    "read_results",
    "result_datasets",
    "results_markdown",
    "speed_table",
    "summarise",
    "write_results",
]

KIND_ORDER = ("noisy", "model", "model-per-channel", "reference", "baseline", "published")

# Published PSNR (dB) on the 8-bit scale, for orientation only (other noise draws).
PUBLISHED = {
    "BSD68": {
        "BM3D (published)": {15: 31.07, 25: 28.57, 50: 25.62},
        "DnCNN-S (published)": {15: 31.73, 25: 29.23, 50: 26.23},
        "BF-DnCNN [0,100] (anchor README)": {
            1: 47.26,
            2: 43.25,
            5: 37.60,
            15: 31.53,
            25: 29.10,
            50: 26.20,
            75: 24.69,
            90: 24.05,
        },
    },
    "CBSD68": {
        "CBM3D (published)": {15: 33.52, 25: 30.71, 50: 27.38},
        "CDnCNN (published)": {15: 33.89, 25: 31.23, 50: 27.92},
    },
}


@dataclass
class Row:
    """One line of ``results.csv``: a quality score, a speed or a memory figure."""

    section: str  # "quality", "paired", "speed", "memory" or "micro"
    dataset: str = ""
    method: str = ""
    kind: str = ""
    sigma: float | None = None
    psnr: float | None = None  # "micro": after the affine fit to the clean image
    ssim: float | None = None
    n_images: int | None = None
    n_total: int | None = None
    seconds: float | None = None
    shape: str = ""
    channels: int | None = None
    mpix_s: float | None = None
    peak_rss_mb: float | None = None
    loaded_rss_mb: float | None = None  # the memory run's process after loading the model
    note: str = ""
    psnr_plain: float | None = None  # "micro": without the fit (pairs on one scale only)


_FLOAT_FIELDS = {
    "sigma",
    "psnr",
    "ssim",
    "seconds",
    "mpix_s",
    "peak_rss_mb",
    "loaded_rss_mb",
    "psnr_plain",
}
_INT_FIELDS = {"n_images", "n_total", "channels"}


def summarise(scores: Iterable, n_total: dict[str, int]) -> list[Row]:
    """Average per-image scores into quality rows, one per (dataset, method, sigma).

    Parameters
    ----------
    scores : iterable of ImageScore
    n_total : dict
        Images of each dataset in this run; a method covering fewer (a partly
        filled baseline cache) gets a note saying so.
    """
    return _average_rows(scores, n_total, "quality", ("dataset", "method", "kind", "sigma"))


def paired_rows(scores: Iterable, n_total: dict[str, int]) -> list[Row]:
    """Each model's mean over exactly the images that a partly cached baseline covers.

    Why: a baseline cached for 15 of 68 images averages other images than the
    models' rows, and a gap of a few hundredths of a dB between two such means says
    more about the images than about the methods. A "paired" row holds a model's
    mean on the baseline's own images; its ``note`` names the baseline.
    """
    by: dict[tuple, dict[str, float]] = defaultdict(dict)
    for s in scores:
        by[(s.dataset, s.method, s.kind, s.sigma)][s.image] = s.psnr
    rows = []
    for (dataset, base, kind, sigma), covered in by.items():
        if kind != "baseline" or len(covered) >= n_total.get(dataset, 0):
            continue
        for (d, method, k, s), images in by.items():
            if d != dataset or s != sigma or k not in ("model", "model-per-channel", "reference"):
                continue
            if not covered.keys() <= images.keys():
                continue
            rows.append(
                Row(
                    section="paired",
                    dataset=dataset,
                    method=method,
                    kind=k,
                    sigma=sigma,
                    psnr=statistics.fmean(images[i] for i in covered),
                    n_images=len(covered),
                    n_total=n_total[dataset],
                    note=base,
                )
            )
    return rows


def paired_section(
    rows: Sequence[Row], dataset: str, methods: Iterable[str] | None = None
) -> list[str]:
    """Markdown lines: each partly cached baseline against the models on its own images.

    A sentence, then a PSNR table with one line per (baseline, σ), the best value of a
    line bold, then a blank line; no lines when no baseline is partial.
    """
    wanted = None if methods is None else set(methods)
    paired = [
        r
        for r in rows
        if r.section == "paired" and r.dataset == dataset and (wanted is None or r.method in wanted)
    ]
    if not paired:
        return []
    models = list(dict.fromkeys(r.method for r in paired))
    base = {
        (r.method, r.sigma): r
        for r in rows
        if r.section == "quality" and r.dataset == dataset and r.kind == "baseline"
    }
    lines = [
        "| baseline | σ | images | baseline PSNR | " + " | ".join(models) + " |",
        "|---|---:|---:|---:|" + "---:|" * len(models),
    ]
    for key in dict.fromkeys((r.note, r.sigma) for r in paired):
        b = base.get(key)
        if b is None:
            continue
        mine = {r.method: r.psnr for r in paired if (r.note, r.sigma) == key}
        values = [b.psnr] + [mine.get(m) for m in models]
        top = max(v for v in values if v is not None)
        cells = []
        for v in values:
            txt = _fmt(v, 2)
            cells.append(f"**{txt}**" if v is not None and round(v, 2) == round(top, 2) else txt)
        head = f"| {key[0]} | {key[1]:g} | {b.n_images}/{b.n_total} | "
        lines.append(head + " | ".join(cells) + " |")
    note = (
        "Baselines cached for fewer images than the run, against each model on exactly those "
        "images (PSNR, dB):"
    )
    return [note, "", *lines, ""]


def _average_rows(
    scores: Iterable, n_total: dict[str, int], section: str, by: Sequence[str]
) -> list[Row]:
    """Average per-image scores into one ``section`` row per group of equal ``by`` fields.

    Why shared: the quality and the microscopy sections average alike (PSNR, SSIM and
    seconds; plain PSNR when every image has one; a note when a method covers fewer
    than the ``n_total[dataset]`` images of the run).

    Parameters
    ----------
    scores : iterable of ImageScore or MicroScore
    n_total : dict
        Images of each dataset in this run.
    section : str
        The rows' section.
    by : sequence of str
        Score attributes that make a group, copied into the row's fields of the same
        names (must include "dataset").
    """
    groups: dict[tuple, list] = defaultdict(list)
    for s in scores:
        groups[tuple(getattr(s, a) for a in by)].append(s)
    rows = []
    for key, items in groups.items():
        fixed = dict(zip(by, key, strict=True))
        n, total = len(items), n_total.get(fixed["dataset"], len(items))
        plain = [i.psnr_plain for i in items if getattr(i, "psnr_plain", None) is not None]
        rows.append(
            Row(
                section=section,
                **fixed,
                psnr=statistics.fmean(i.psnr for i in items),
                psnr_plain=statistics.fmean(plain) if len(plain) == n else None,
                ssim=statistics.fmean(i.ssim for i in items),
                n_images=n,
                n_total=total,
                seconds=statistics.fmean(i.seconds for i in items),
                note="" if n == total else f"only {n} of {total} images",
            )
        )
    return rows


def published_rows(datasets: Iterable[str], sigmas: Sequence[float] | None = None) -> list[Row]:
    """Published figures for the datasets in this run (all their sigmas, or those in ``sigmas``)."""
    rows = []
    for dataset in datasets:
        for method, table in PUBLISHED.get(dataset, {}).items():
            for sigma, value in table.items():
                if sigmas is None or float(sigma) in {float(s) for s in sigmas}:
                    rows.append(
                        Row(
                            section="quality",
                            dataset=dataset,
                            method=method,
                            kind="published",
                            sigma=float(sigma),
                            psnr=value,
                            note="published figure (other noise draws)",
                        )
                    )
    return rows


def write_results(rows: Sequence[Row], path: str | Path) -> Path:
    """Write rows as ``results.csv`` (long format, one measurement per line).

    Floats keep 10 significant digits: the docs regenerated from this file must round
    exactly as ``results.md``, written from the unrounded values (6 digits turned a
    27.2250 into 27.22 there and 27.23 in the README).
    """
    path = Path(path)
    names = [f.name for f in fields(Row)]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=names)
        w.writeheader()
        for r in rows:
            w.writerow(
                {
                    k: ("" if v is None else (f"{v:.10g}" if isinstance(v, float) else v))
                    for k, v in asdict(r).items()
                }
            )
    return path


def read_results(path: str | Path) -> list[Row]:
    """Read a ``results.csv`` written by :func:`write_results`."""
    out = []
    with open(path, newline="") as f:
        for raw in csv.DictReader(f):
            vals = {}
            for k, v in raw.items():
                if k in _FLOAT_FIELDS:
                    vals[k] = float(v) if v != "" else None
                elif k in _INT_FIELDS:
                    vals[k] = int(v) if v != "" else None
                else:
                    vals[k] = v
            out.append(Row(**vals))
    return out


# --------------------------------------------------------------------------- markdown


def _kind_rank(kind: str) -> int:
    return KIND_ORDER.index(kind) if kind in KIND_ORDER else len(KIND_ORDER)


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.{digits}f}"


def _method_label(r: Row) -> str:
    label = {"noisy": "noisy input"}.get(r.kind, r.method)
    if r.kind == "model-per-channel" and "per channel" not in label:
        label += " (per channel)"
    return label


def quality_table(
    rows: Sequence[Row], dataset: str, metric: str = "psnr", methods: Iterable[str] | None = None
) -> str:
    """Markdown table of one metric: methods as rows, sigmas as columns.

    The best measured value of each column (complete rows only, not 'published')
    is bold. Rows covering fewer images than the run say ``(n/N images)``.
    """
    wanted = None if methods is None else set(methods)
    q = [
        r
        for r in rows
        if r.section == "quality"
        and r.dataset == dataset
        and getattr(r, metric) is not None
        and (wanted is None or r.method in wanted or r.kind == "noisy")
    ]
    if not q:
        return ""
    sigmas = sorted({r.sigma for r in q if r.kind != "published"} or {r.sigma for r in q})
    q = [r for r in q if r.sigma in sigmas]
    by_method: dict[tuple, dict[float, Row]] = defaultdict(dict)
    order = {m: i for i, m in enumerate(dict.fromkeys(r.method for r in q))}  # run order
    for r in q:
        by_method[(_kind_rank(r.kind), r.kind, r.method)][r.sigma] = r
    best = {}
    for s in sigmas:
        vals = [
            getattr(r, metric)
            for (_, kind, _), d in by_method.items()
            for sig, r in d.items()
            if sig == s and kind not in ("published", "noisy") and r.n_images == r.n_total
        ]
        best[s] = max(vals) if vals else None
    digits = 2 if metric == "psnr" else 4
    head = "| method | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |"
    sep = "|---|" + "---:|" * len(sigmas)
    lines = [head, sep]
    for key in sorted(by_method, key=lambda k: (k[0], order[k[2]])):
        d = by_method[key]
        any_row = next(iter(d.values()))
        label = _method_label(any_row)
        partial = {
            (r.n_images, r.n_total)
            for r in d.values()
            if r.n_images is not None and r.n_total and r.n_images != r.n_total
        }
        if partial:
            label += " (" + ", ".join(f"{n}/{t}" for n, t in sorted(partial)) + " images)"
        cells = []
        for s in sigmas:
            r = d.get(s)
            v = None if r is None else getattr(r, metric)
            txt = _fmt(v, digits)
            if (
                r is not None
                and v is not None
                and best[s] is not None
                and round(v, digits) == round(best[s], digits)
                and r.kind not in ("published", "noisy")
                and r.n_images == r.n_total
            ):
                txt = f"**{txt}**"
            cells.append(txt)
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def speed_table(rows: Sequence[Row], methods: Iterable[str] | None = None) -> str:
    """Markdown table of throughput (Mpix/s) per shape and the memory run, per model."""
    wanted = None if methods is None else set(methods)
    sp = [
        r
        for r in rows
        if r.section in ("speed", "memory") and (wanted is None or r.method in wanted)
    ]
    if not sp:
        return ""
    shapes = list(dict.fromkeys(r.shape for r in sp if r.section == "speed"))
    mem_shapes = list(dict.fromkeys(r.shape for r in sp if r.section == "memory"))
    head = ["model"] + [f"{s} (Mpix/s)" for s in shapes]
    if len(mem_shapes) == 1:  # one memory-run input for all: named in the headers
        head += [f"{mem_shapes[0]} (Mpix/s)", f"{mem_shapes[0]} peak RSS (MiB)"]
    elif mem_shapes:  # several (e.g. a uint16 stack): a column says which
        head += ["memory run", "memory run (Mpix/s)", "peak RSS (MiB)"]
    if mem_shapes:
        head += ["RSS after loading (MiB)"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for method in dict.fromkeys(r.method for r in sp):
        mine = [r for r in sp if r.method == method]
        cells = [method]
        for s in shapes:
            r = next((r for r in mine if r.section == "speed" and r.shape == s), None)
            cells.append(_fmt(r.mpix_s if r else None, 3))
        if mem_shapes:
            r = next((r for r in mine if r.section == "memory"), None)
            if len(mem_shapes) > 1:
                cells.append(r.shape if r else "–")
            cells += [
                _fmt(r.mpix_s if r else None, 3),
                _fmt(r.peak_rss_mb if r else None, 0),
                _fmt(r.loaded_rss_mb if r else None, 0),
            ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def dataset_title(dataset: str, rows: Sequence[Row]) -> str:
    """Heading of a test set: name, gray or colour, and the number of images in the run."""
    n = max((r.n_total or 0) for r in rows if r.section == "quality" and r.dataset == dataset)
    from .bench_quality import COLOR_SETS

    kind = "colour" if dataset in COLOR_SETS else "gray"
    return f"{dataset} ({kind}, {n} image{'' if n == 1 else 's'})"


def result_datasets(rows: Sequence[Row]) -> list[str]:
    """The measured test sets in run order."""
    return list(
        dict.fromkeys(r.dataset for r in rows if r.section == "quality" and r.kind != "published")
    )


def _provenance(meta: dict) -> list[str]:
    return [
        f"- Command: `{meta.get('command', '')}`",
        f"- Date: {meta.get('date', '')}",
        f"- Hardware: {meta.get('hardware', '')}",
    ]


PROTOCOL = (
    "Protocol: clean 8-bit images as floats in [0, 255]; white Gaussian noise of the given "
    "σ (8-bit scale) added in float, not clipped, from a generator seeded per (dataset, image, σ), "
    "so every method sees identical noisy inputs; models get the float image as is; outputs, "
    "and the noisy input's own row, clipped to [0, 255]; PSNR with peak 255 and SSIM "
    "(Gaussian window σ=1.5, data range 255) "
    "averaged over images. Baselines get the true σ (BM3D/CBM3D) or the wavelet estimate "
    '("est. sigma", NLM). Published rows used other noise draws and are for orientation only.'
)


SPEED_NOTE = (
    "Mpix/s: median of up to 3 calls after a warm-up call (one in --quick), uint8 input, gray "
    "for gray models and RGB for colour models, automatic tiling. The large image is one cold "
    "call in a fresh process; its peak resident memory (RSS) is that whole process's, "
    "TensorFlow included. The paper's BF-DnCNN rows are timed on 512x512 only (as slow at "
    "any size) and get no memory run."
)


def results_markdown(rows: Sequence[Row], meta: dict) -> str:
    """The full ``results.md``: provenance, per-dataset PSNR and SSIM tables, speed, coverage."""
    out = ["# Benchmark results", ""] + _provenance(meta)
    if meta.get("quick"):
        out.append("- **Quick run** (small subset): not for the docs.")
    out.append("")
    if result_datasets(rows):
        out += [PROTOCOL, ""]
    for dataset in result_datasets(rows):
        out += [
            f"## {dataset_title(dataset, rows)}",
            "",
            "PSNR (dB)",
            "",
            quality_table(rows, dataset, "psnr"),
            "",
            "SSIM",
            "",
            quality_table(rows, dataset, "ssim"),
            "",
        ]
        out += paired_section(rows, dataset)
    from .bench_micro_report import micro_markdown

    micro = micro_markdown(rows, meta)
    if micro:
        out += [micro, ""]
    sp = speed_table(rows)
    if sp:
        out += ["## Speed and memory", "", SPEED_NOTE, "", sp, ""]
    notes = [r for r in rows if r.section == "quality" and r.kind == "baseline" and r.note]
    cov = _coverage(rows)
    if cov:
        cache = meta.get("baselines_csv", "src_models/bench_baselines.csv")
        out += [
            "## Baseline coverage",
            "",
            f"Baselines are read from the cache `{cache}` "
            "(filled by `--compute-baselines`); images covered per dataset and σ:",
            "",
            cov,
            "",
        ]
    if notes:
        out += ["Rows marked (n/N images) average fewer images than the other rows.", ""]
    return "\n".join(out).rstrip() + "\n"


def _coverage(rows: Sequence[Row]) -> str:
    b = [r for r in rows if r.section == "quality" and r.kind == "baseline"]
    if not b and not any(r.section == "quality" and r.kind == "noisy" for r in rows):
        return ""
    lines = ["| dataset | method | images per σ |", "|---|---|---|"]
    for dataset in result_datasets(rows):
        noisy = [r for r in rows if r.section == "quality" and r.dataset == dataset]
        noisy = [r for r in noisy if r.kind == "noisy"]
        sigmas = sorted({r.sigma for r in noisy})
        total = max((r.n_total or 0) for r in noisy)
        methods = list(dict.fromkeys(r.method for r in b if r.dataset == dataset))
        if not methods:
            lines.append(f"| {dataset} | (none cached) | 0/{total} |")
        for m in methods:
            have = {r.sigma: r.n_images for r in b if r.dataset == dataset and r.method == m}
            txt = ", ".join(f"σ={s:g}: {have.get(s, 0)}/{total}" for s in sigmas)
            lines.append(f"| {dataset} | {m} | {txt} |")
    return "\n".join(lines)
