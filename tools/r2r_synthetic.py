"""Noisy-only (R2R) fine-tuning on synthetic low-photon frames: does it keep, gain or lose?

Why: the real-pair benchmark (``python -m src_models.bench_selfsup``) must not be used
to tune the method, so this is the development check. skimage's ``camera`` and
``astronaut`` (gray) become Poisson-Gaussian camera frames (``--photons`` at the
brightest pixel, read noise ``--read`` electrons, black level ``--offset`` ADU,
200 ADU at the peak, no clipping); the bundled ``microscopy`` model is fine-tuned on
each frame alone and both are scored against the noise-free frame (affine-fitted PSNR,
as in the microscopy benchmark), denoising with the black level estimated.

Run ``python tools/r2r_synthetic.py [--black-level camera|auto|none] [--steps 300]
[--tuned-weight W]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import numpy as np


def frames() -> dict[str, np.ndarray]:
    from skimage import color, data

    return {"camera": data.camera() / 255.0, "astronaut": color.rgb2gray(data.astronaut())}


def camera_frame(clean01, photons, read_e, offset, seed=0):
    """Noisy and noise-free frame in ADU: ``offset + gain * (Poisson + read)``, gain 200/photons."""
    rng = np.random.default_rng(seed)
    gain = 200.0 / photons
    mean = clean01 * photons
    electrons = rng.poisson(mean) + rng.normal(0.0, read_e, mean.shape)
    return offset + gain * electrons, offset + gain * mean


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--photons", type=float, default=8.0)
    p.add_argument("--read", type=float, default=1.0, help="read noise, electrons")
    p.add_argument("--offset", type=float, default=8.0, help="black level, ADU")
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--black-level", default="auto", help="fine-tuning's black_level")
    p.add_argument("--tuned-weight", type=float, default=None,
                   help="share of the fine-tuned weights in the saved model (default: the "
                   "fine-tuning default, 0.5 for noisy-only runs; 1 = no averaging)")
    a = p.parse_args(argv)

    from src_models.bench_micro import micro_score, model_runner
    from src_models.finetune import FinetuneSettings, finetune
    from src_models.finetune_data import SourceImage
    from src_models.registry import ENV_MODEL_DIR, clear_cache, list_models, load_model

    base_path = next(str(m.path) for m in list_models() if m.name == "microscopy")
    for name, clean01 in frames().items():
        noisy, clean = camera_frame(clean01, a.photons, a.read, a.offset)
        before = micro_score(clean, model_runner(load_model("microscopy"))(noisy), plain=False)[0]
        with tempfile.TemporaryDirectory() as tmp:
            os.environ[ENV_MODEL_DIR] = tmp
            clear_cache()
            settings = FinetuneSettings(name="synthetic", mode="noisy", base=base_path,
                                        steps=a.steps, black_level=a.black_level,
                                        tuned_weight=a.tuned_weight)
            result = finetune(settings, [SourceImage(name, noisy.astype(np.float32))])
            after = model_runner(load_model(result.model_path))(noisy)
            kept = result.card.notes.get("kept", "")
            del os.environ[ENV_MODEL_DIR]
            clear_cache()
        tuned = micro_score(clean, after, plain=False)[0]
        print(f"{name}, {a.photons:g} photons, black_level {a.black_level}, tuned_weight "
              f"{a.tuned_weight}: base {before:.2f} dB, "
              f"fine-tuned {tuned:.2f} dB ({tuned - before:+.2f}; kept {kept})", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
