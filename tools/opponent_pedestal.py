"""Choose the colour-difference pedestal of the opponent colour model on training images.

Runs the bundled ``gray`` model on the opponent planes of noisy *training* colour images
(``train/color432``, never ``eval/``): the luminance as is, each colour difference lifted
onto ``gain * (box mean of the brightness over window px)`` and lowered again, then back
to RGB. Prints the mean PSNR (8-bit, peak 255) per sigma and setting, beside the gray
model run on R, G and B separately. The ``color`` recipe's ``pedestal_window`` and
``pedestal_gain`` come from this sweep (the widest window the tiling margin affords; the
gain that led at most sigmas). This applies untrained gray weights, so it measures the
transform alone, not the fine-tuned model.

    python tools/opponent_pedestal.py --data ../shared/data [--images 8] [--sigmas 5 15 50]
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

# rows: luminance, red-blue, green-magenta (the same basis as src_models.layers.OpponentColor)
OPPONENT = np.array([[1, 1, 1], [1, 0, -1], [1, -2, 1]], dtype=np.float64)
OPPONENT /= np.linalg.norm(OPPONENT, axis=1, keepdims=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--images", type=int, default=8, help="how many (every 54th image)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[5, 15, 50])
    parser.add_argument("--windows", type=int, nargs="+", default=[65, 97, 129])
    parser.add_argument("--gains", type=float, nargs="+", default=[1.0, 1.25, 1.5])
    args = parser.parse_args(argv)

    from scipy.ndimage import uniform_filter

    from src_models.data import list_images, load_image, psnr
    from src_models.registry import load_model

    gray = load_model("gray")

    def den(plane: np.ndarray) -> np.ndarray:
        return gray.denoise(plane.astype(np.float32), offset=0.0).astype(np.float64)

    files = list_images([Path(args.data) / "train" / "color432"])[::54][: args.images]
    scores: dict[tuple[float, str], list[float]] = {}
    for sigma in args.sigmas:
        for f in files:
            clean = np.round(load_image(f, color=True).astype(np.float64) * 255.0)
            rng = np.random.default_rng([zlib.crc32(f.name.encode()), int(sigma)])
            noisy = clean + sigma * rng.standard_normal(clean.shape)
            opp = noisy @ OPPONENT.T
            brightness = opp[..., 0] / np.sqrt(3.0)
            luma = den(opp[..., 0])
            for window in args.windows:
                mean = uniform_filter(brightness, window, mode="reflect")
                for gain in args.gains:
                    p = gain * mean
                    chroma = [den(opp[..., c] + p) - p for c in (1, 2)]
                    out = np.stack([luma, *chroma], axis=-1) @ OPPONENT
                    key = (sigma, f"window {window}, gain {gain:g}")
                    scores.setdefault(key, []).append(psnr(clean, np.clip(out, 0, 255), 255.0))
            rgb = np.stack([den(noisy[..., c]) for c in range(3)], axis=-1)
            scores.setdefault((sigma, "R, G, B separately"), []).append(
                psnr(clean, np.clip(rgb, 0, 255), 255.0)
            )
        print(f"sigma {sigma:g} ({len(files)} training images):")
        for (s, name), v in scores.items():
            if s == sigma:
                print(f"  {name:24s} {np.mean(v):.3f} dB")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
