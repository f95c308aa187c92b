"""How noisy are the "clean" reference images themselves, and does that explain sigma 1?

Why this exists: the issue asks that a model never lower the PSNR of a nearly clean image
(sigma 1 and 2). On Set12 and McMaster the blind models do, and the losses are uneven:
``boat`` (Set12 10.png) loses 10 dB at sigma 1. A blind denoiser removes whatever looks
like white noise; if a reference already carries noise of a few grey levels, removing it
is scored as damage. This estimates each reference's own noise (skimage's wavelet
``estimate_sigma``, averaged over colour channels) and, given a benchmark's
``per_image.csv``, sets each image's sigma-1 change (model minus noisy input, dB) beside it.

    PYTHONPATH=. python tools/reference_noise.py --data ../shared/data \
        --per-image bench_out/s15/per_image.csv
"""

from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np
from skimage.restoration import estimate_sigma

from src_models.bench_quality import COLOR_SETS, GRAY_SETS, dataset_samples, load_clean

NOISY_AT = 2.0  # a reference whose own sigma (8-bit) is above this counts as noisy
MODELS = {False: "gray", True: "color"}


def _sigma1_changes(path: Path | None) -> dict[tuple[str, str, str], float]:
    """(dataset, image, method) -> PSNR of the method minus the noisy input's, at sigma 1."""
    if path is None:
        return {}
    psnr: dict[tuple[str, str, str], float] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            if float(row["sigma"]) == 1.0:
                psnr[(row["dataset"], row["image"], row["method"])] = float(row["psnr"])
    return {
        key: value - psnr[(key[0], key[1], "noisy")]
        for key, value in psnr.items()
        if key[2] != "noisy" and (key[0], key[1], "noisy") in psnr
    }


def _mean(delta: np.ndarray, mask: np.ndarray) -> str:
    """Mean of the finite changes under ``mask`` and their count, or a dash."""
    vals = delta[mask & np.isfinite(delta)]
    return f"{vals.mean():+.2f} ({vals.size})" if vals.size else "–"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--per-image", type=Path, help="a benchmark's per_image.csv (sigma 1 rows)")
    ap.add_argument("--list", default="Set12,McMaster", help="data sets to list image by image")
    args = ap.parse_args()
    changes = _sigma1_changes(args.per_image)
    listed = {s for s in args.list.split(",") if s}
    print("Own noise of the clean references (skimage estimate_sigma, 8-bit grey levels);")
    print(
        "sigma-1 change: model PSNR minus the noisy input's (dB), "
        f"by reference sigma <= / > {NOISY_AT:g}"
    )
    print()
    print(
        "| data set | images | median own σ | own σ > 2 "
        "| σ-1 change, own σ ≤ 2 | σ-1 change, own σ > 2 |"
    )
    print("|---|---:|---:|---:|---:|---:|")
    rows = []
    for dataset in GRAY_SETS + COLOR_SETS:
        try:
            samples = dataset_samples(args.data, dataset)
        except FileNotFoundError:
            continue
        model = MODELS[dataset in COLOR_SETS]
        own = []
        for s in samples:
            clean = load_clean(s)
            sigma = estimate_sigma(clean, channel_axis=-1 if s.color else None, average_sigmas=True)
            own.append(float(sigma))
            rows.append((dataset, s.name, float(sigma), changes.get((dataset, s.name, model))))
        own_arr = np.array(own)
        noisy = own_arr > NOISY_AT
        delta = np.array(
            [changes.get((dataset, s.name, model), np.nan) for s in samples], dtype=float
        )

        print(
            f"| {dataset} (`{model}`) | {len(samples)} | {np.median(own_arr):.2f} | "
            f"{int(noisy.sum())} | {_mean(delta, ~noisy)} | {_mean(delta, noisy)} |"
        )
    for dataset in sorted(listed):
        picked = sorted((r for r in rows if r[0] == dataset), key=lambda r: -r[2])
        if not picked:
            continue
        print()
        print(f"{dataset}, image by image (`{MODELS[dataset in COLOR_SETS]}`):")
        print()
        print("| image | own σ | σ-1 change (dB) |")
        print("|---|---:|---:|")
        for _, image, sigma, change in picked:
            text = "–" if change is None else f"{change:+.2f}"
            print(f"| {image} | {sigma:.2f} | {text} |")


if __name__ == "__main__":
    main()
