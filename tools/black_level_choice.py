"""Which black level should denoising subtract? Synthetic camera frames, known offset.

Why this exists: ``noise_model.black_level`` (the 0.5th percentile of the plane smoothed
with a 1-px Gaussian) sits ~0.5 read-noise sigma under a flat background, so a small
pedestal is left in what the network sees. This measures the ``microscopy`` model's PSNR
when denoising subtracts the true offset or the level found with 1, 2 or 3 px smoothing,
on fluorescence-like versions of the held-out training photos (never eval/).

    PYTHONPATH=. python tools/black_level_choice.py --data ../shared/data
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from src_models.config import FluorescenceConfig
from src_models.data import fluorescence_like, list_images, load_image, split_train_val
from src_models.noise_model import black_level
from src_models.registry import load_model

OFFSET, GAIN = 100.0, 10.0  # camera offset and data units per photon


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="../shared/data")
    ap.add_argument("--model", default="microscopy")
    args = ap.parse_args()
    paths = list_images([Path(args.data) / "train" / "gray400"])
    _, val = split_train_val(paths, 0.05, 8, 0)  # the recipes' held-out images
    den = load_model(args.model)
    fluo = FluorescenceConfig(prob=1.0, gamma_range=(1.0, 3.0), psf_sigma_range=(0.5, 2.0))
    rng = np.random.default_rng(0)
    psnrs: dict = {}
    errors: dict = {}
    for j, path in enumerate(val):
        im = load_image(path, False)[:256, :256]
        clean = fluorescence_like(im, fluo, np.random.default_rng(j))[..., 0]
        for photons in (3, 10, 30, 100):
            # read noise on the 8-bit scale of the full-scale signal, as in training (0-15)
            for read_8bit in (2.0, 8.0):
                read = read_8bit / 255 * photons * GAIN
                noise = read * rng.standard_normal(clean.shape)
                y = OFFSET + GAIN * rng.poisson(clean * photons) + noise
                ref = OFFSET + GAIN * photons * clean
                levels = {"true": OFFSET}
                levels.update({f"{s:g} px": black_level(y, s) for s in (1.0, 2.0, 3.0)})
                for name, level in levels.items():
                    out = den.denoise(y.astype(np.float32), offset=level)
                    mse = float(np.mean((out - ref) ** 2))
                    key = (photons, read_8bit, name)
                    psnrs.setdefault(key, []).append(10 * np.log10((GAIN * photons) ** 2 / mse))
                    errors.setdefault(key, []).append((level - OFFSET) / read if read else 0.0)
    names = ["true", "1 px", "2 px", "3 px"]
    print("PSNR (dB, peak = full scale), mean over images;")
    print("in brackets the level's error in read sigmas")
    print("| photons | read (8-bit) | " + " | ".join(names) + " |")
    print("|---:|---:|" + "---:|" * len(names))
    for photons in (3, 10, 30, 100):
        for read_8bit in (2.0, 8.0):
            keys = [(photons, read_8bit, n) for n in names]
            cells = [f"{np.mean(psnrs[k]):.2f} ({np.mean(errors[k]):+.2f})" for k in keys]
            print(f"| {photons} | {read_8bit:g} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
