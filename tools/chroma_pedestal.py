"""Choose the opponent colour model's chroma pedestal window on training images.

Rebuilds the bundled ``color`` model (an opponent U-Net) with each
``pedestal_chroma_window`` in ``--windows`` (0: the brightness pedestal alone), keeps
its trained weights (the pedestal has none), and denoises noisy *training* colour
images (``train/color432``, never ``eval/``). Prints the mean PSNR (8-bit, peak 255)
per sigma and window, over all images and over the images whose colour differences
exceed the brightness pedestal somewhere (saturated colours, where the brightness
pedestal alone leaves the lifted planes negative). Zero-shot: it measures the
transform with the model's weights, not a retrained model. The ``color`` recipe's
window came from the first opponent model, trained without the bound (window 0)::

    git show bf718c4:src_models/pretrained/color.keras > color-s8.keras
    python tools/chroma_pedestal.py --model color-s8.keras

    python tools/chroma_pedestal.py --data ../shared/data [--images 24] [--sigmas 1 5 15 50]
"""

from __future__ import annotations

import argparse
import sys
import zlib
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", help="the shared data folder")
    parser.add_argument("--model", default="color", help="a bundled opponent model or a file")
    parser.add_argument("--images", type=int, default=24, help="how many (evenly spaced)")
    parser.add_argument("--sigmas", type=float, nargs="+", default=[1, 5, 15, 50])
    parser.add_argument("--windows", type=int, nargs="+", default=[0, 17, 33, 65])
    args = parser.parse_args(argv)

    from src_models.architectures import build_model
    from src_models.data import list_images, load_image, psnr
    from src_models.inference import Denoiser
    from src_models.layers import ChromaPedestal, OpponentColor
    from src_models.registry import load_model

    base = load_model(args.model)
    arch = base.card.recipe.architecture
    if getattr(arch, "channel_mode", None) != "opponent":
        raise SystemExit(f"{args.model} is not an opponent colour model")
    models = {}
    for w in args.windows:
        cfg = arch.model_copy(update={"pedestal_chroma_window": w})
        m = build_model(cfg, name=base.model.name)
        m.set_weights(base.model.get_weights())
        models[w] = Denoiser(m, base.card, name=f"chroma_window={w}")

    files = list_images([Path(args.data) / "train" / "color432"])
    files = files[:: max(1, len(files) // args.images)][: args.images]
    images = {f.name: load_image(f, color=True).astype(np.float64) for f in files}
    brightness_only = ChromaPedestal(arch.pedestal_window, arch.pedestal_gain)
    saturated = set()
    for name, rgb in images.items():  # a colour difference above the brightness pedestal
        opp = OpponentColor()(rgb[None].astype("float32"))
        above = np.abs(np.asarray(opp)[..., 1:]) > np.asarray(brightness_only(opp))[..., 1:] + 0.02
        if above.any(axis=-1).mean() > 0.005:
            saturated.add(name)
    print(f"{len(files)} training images, {len(saturated)} with saturated colours", flush=True)
    print("| sigma | window | all | saturated |\n|---|---|---|---|")
    for sigma in args.sigmas:
        for w, den in models.items():
            alls, sats = [], []
            for name, rgb in images.items():
                clean = np.round(rgb * 255.0)
                rng = np.random.default_rng([zlib.crc32(name.encode()), int(sigma * 10)])
                noisy = clean + sigma * rng.standard_normal(clean.shape)
                out = den.denoise((noisy / 255.0).astype(np.float32), channel_axis=-1, offset=0.0)
                v = psnr(clean / 255.0, np.asarray(out, np.float64))
                alls.append(v)
                if name in saturated:
                    sats.append(v)
            sat = f"{np.mean(sats):.2f}" if sats else "-"
            print(f"| {sigma:g} | {w} | {np.mean(alls):.2f} | {sat} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
