"""PSNR of models on a recipe's held-out training crops, the images it never trains on.

Why: choosing between training runs on eval/ would tune on the benchmark; the
recipe's own validation split (``data.val_fraction``, ``split_seed``) is where
stages and loss settings are compared. Training logs score only ``val_sigmas``;
this scores any model file at any σ, near-clean included, on identical noisy crops.

    PYTHONPATH=. python tools/heldout_psnr.py --recipe src_models/recipes/gray-fast.yaml \
        old.keras src_models/pretrained/gray-fast.keras [--sigmas 0,1,2,5,15,25,50,75]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from src_models.config import load_recipe  # noqa: E402
from src_models.data import (  # noqa: E402
    SCORE_MAX_DB,
    list_images,
    load_image,
    psnr,
    split_train_val,
    validation_set,
)
from src_models.modelfile import load_keras_model  # noqa: E402
from src_models.train import evaluate  # noqa: E402


def heldout_scores(recipe_path, models, sigmas, seed=0, crop=256) -> dict[str, dict[float, float]]:
    """Mean PSNR (dB, as training validates) per model and σ, plus the noisy input's."""
    recipe = load_recipe(recipe_path)
    images = [load_image(p, color=recipe.data.color) for p in list_images(recipe.data.train)]
    _, held_out = split_train_val(
        images, recipe.data.val_fraction, recipe.data.max_val_images, recipe.data.split_seed
    )
    pairs = validation_set(list(held_out), sigmas, seed=seed, crop=crop)
    noisy: dict[float, list[float]] = {}
    for y, clean, s in pairs:
        noisy.setdefault(s, []).append(psnr(clean, y, max_db=SCORE_MAX_DB))
    scores = {"noisy input": {s: float(np.mean(v)) for s, v in noisy.items()}}
    for path in models:
        model, card = load_keras_model(path)  # scored as training validates it
        scores[str(path)] = evaluate(model, pairs, int(card.size_multiple))
    return scores


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--recipe", required=True, help="recipe whose held-out split to use")
    parser.add_argument("models", nargs="+", help=".keras model files")
    parser.add_argument("--sigmas", default="0,1,2,5,15,25,50,75", help="8-bit scale")
    parser.add_argument("--seed", type=int, default=0, help="noise seed")
    args = parser.parse_args(argv)
    sigmas = tuple(float(s) for s in args.sigmas.split(","))
    scores = heldout_scores(args.recipe, args.models, sigmas, seed=args.seed)
    print("| model | " + " | ".join(f"σ={s:g}" for s in sigmas) + " |")
    print("|---|" + "---:|" * len(sigmas))
    for name, row in scores.items():
        print(f"| {name} | " + " | ".join(f"{row[s]:.2f}" for s in sigmas) + " |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
