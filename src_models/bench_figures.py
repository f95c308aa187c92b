"""Benchmark figures: PSNR against sigma per test set, and side-by-side crops.

Why a gain panel next to the PSNR panel: PSNR spans 20-48 dB over the sigmas, so
differences of a few tenths between methods only show as gains over the noisy input.
Matplotlib runs headless (Agg); nothing here opens a window.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .bench_report import KIND_ORDER, Row

__all__ = ["crop_box", "plot_crops", "plot_psnr_vs_sigma"]

_STYLE = {
    "noisy": dict(color="0.5", linestyle="--", marker="."),
    "model": dict(linestyle="-", marker="o", linewidth=2),
    "model-per-channel": dict(linestyle="-", marker="s"),
    "reference": dict(linestyle=":", marker="^"),
    "baseline": dict(linestyle="-.", marker="x"),
    "published": dict(linestyle="none", marker="*", markersize=9),
}


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_psnr_vs_sigma(rows: Sequence[Row], dataset: str, path: str | Path) -> Path | None:
    """Plot PSNR and PSNR gain over the noisy input against sigma for one test set.

    Returns
    -------
    Path or None
        The written PNG, or None when the dataset has no quality rows.
    """
    q = [r for r in rows if r.section == "quality" and r.dataset == dataset and r.psnr is not None]
    if not q:
        return None
    series: dict[tuple, dict[float, float]] = defaultdict(dict)
    for r in q:
        series[(KIND_ORDER.index(r.kind) if r.kind in KIND_ORDER else 99, r.kind, r.method)][
            r.sigma
        ] = r.psnr
    noisy = next((s for (_, kind, _), s in series.items() if kind == "noisy"), {})
    plt = _pyplot()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    for key in sorted(series):
        _, kind, method = key
        pts = sorted(series[key].items())
        xs = [p[0] for p in pts]
        label = "noisy input" if kind == "noisy" else method
        ax1.plot(xs, [p[1] for p in pts], label=label, **_STYLE.get(kind, {}))
        gain = [(s, v - noisy[s]) for s, v in pts if s in noisy]
        if kind != "noisy" and gain:
            ax2.plot(
                [g[0] for g in gain], [g[1] for g in gain], label=label, **_STYLE.get(kind, {})
            )
    ax1.set(xlabel="noise σ (8-bit scale)", ylabel="PSNR (dB)", title=f"{dataset}: PSNR")
    ax2.set(
        xlabel="noise σ (8-bit scale)",
        ylabel="PSNR gain over noisy input (dB)",
        title=f"{dataset}: gain",
    )
    for ax in (ax1, ax2):
        ax.grid(alpha=0.3)
    ax1.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def crop_box(shape: tuple[int, ...], size: int) -> tuple[slice, slice]:
    """A centred ``size`` x ``size`` box (smaller if the image is)."""
    h, w = shape[:2]
    ch, cw = min(size, h), min(size, w)
    y0, x0 = (h - ch) // 2, (w - cw) // 2
    return slice(y0, y0 + ch), slice(x0, x0 + cw)


def plot_crops(
    panels: Sequence[tuple[str, np.ndarray]],
    clean: np.ndarray,
    path: str | Path,
    title: str = "",
    display_max: float = 255.0,
) -> Path:
    """Show crops side by side, each titled with its PSNR on the crop against ``clean``.

    Parameters
    ----------
    panels : sequence of (label, image)
        Crops on the 8-bit scale, (h, w) or (h, w, 3), all the shape of ``clean``.
    clean : ndarray
        The clean crop (shown last).
    path : str or Path
        The PNG to write.
    title : str
        Figure title.
    display_max : float
        The value shown as white (dim microscopy: a high percentile of ``clean``);
        PSNR is always on the 8-bit scale.
    """
    from .data import psnr

    plt = _pyplot()
    items = list(panels) + [("clean", clean)]
    n = len(items)
    fig, axes = plt.subplots(1, n, figsize=(2.6 * n, 3.3), squeeze=False)
    for ax, (label, img) in zip(axes[0], items, strict=True):
        shown = np.clip(np.asarray(img, dtype=np.float64) / max(display_max, 1e-12), 0, 1)
        gray = shown.ndim == 2
        ax.imshow(shown, cmap="gray" if gray else None, vmin=0, vmax=1, interpolation="nearest")
        sub = label if label == "clean" else f"{label}\n{psnr(clean, img, 255.0):.2f} dB"
        ax.set_title(sub, fontsize=8)
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout(rect=(0, 0, 1, 0.9) if title else None)
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
