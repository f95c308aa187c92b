"""Copy a trained model into the package (``src_models/pretrained``) with a checked card.

Why a step of its own: a bundled model must be light (no optimizer state), say
truthfully how far tiles must overlap (the receptive field is measured again on
the final file) and be homogeneous; this is checked here, once, before it ships.

``python -m src_models.bundle runs/gray/gray.keras [--name gray]``
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from .registry import BUNDLED_DIR

__all__ = ["bundle_model", "portable_data_path", "portable_model_path"]

MAX_BYTES = 10 * 1024 * 1024  # the package promise: each bundled model <= 10 MB


def portable_data_path(path: str) -> str:
    """``.../data/train/gray400`` (any machine's copy) as ``../shared/data/train/gray400``.

    Why: a card must name the data the way a reader of the repository finds it, not
    the folder of the (GPU) machine that happened to train the model.
    """
    parts = Path(path).parts
    if "train" in parts:
        i = len(parts) - 1 - parts[::-1].index("train")
        return "/".join(("..", "shared", "data", *parts[i:]))
    return path


def portable_model_path(path: str | None) -> str | None:
    """A base model file as the repository names it (``runs/gray-1/gray.keras``); names kept.

    Why: a two-stage recipe starts from the first stage's run folder, which the card must
    name as a reader finds it, not as the (GPU) machine that trained it saw it.
    """
    if not path or not path.endswith(".keras"):
        return path
    parts = Path(path).parts
    if "runs" in parts:
        i = len(parts) - 1 - parts[::-1].index("runs")
        return "/".join(parts[i:])
    if parts[-3:-1] == ("src_models", "pretrained"):  # a bundled model (color starts from gray)
        return "/".join(parts[-3:])
    return Path(path).name


def bundle_model(source: str | Path, name: str | None = None, dest: Path = BUNDLED_DIR) -> Path:
    """Write ``dest/<name>.keras`` from a trained model file; returns the new path.

    Raises
    ------
    ValueError
        The model is not homogeneous or too large to ship.
    """
    from .architectures import parameter_count, receptive_field
    from .modelfile import load_keras_model, save_model

    model, card = load_keras_model(source)
    name = name or card.name
    rf = receptive_field(model, card.size_multiple)
    update = {"name": name, "receptive_field": rf, "parameters": parameter_count(model)}
    update["training_data"] = [portable_data_path(p) for p in card.training_data]
    update["base_model"] = portable_model_path(card.base_model)
    if card.recipe is not None:
        recipe = card.recipe.model_copy(deep=True)
        recipe.data.train = [portable_data_path(p) for p in recipe.data.train]
        recipe.init_from = portable_model_path(recipe.init_from)
        recipe.name = name
        update["recipe"] = recipe
    card = card.model_copy(update=update)
    rng = np.random.default_rng(0)
    side = max(64, 4 * card.size_multiple)
    y = rng.uniform(0, 1, size=(1, side, side, card.channels)).astype("float32")
    d1 = np.asarray(model(y, training=False))
    for a in (1e-6, 3.0, 1e4):  # tiny and large scales catch an epsilon hidden in a layer
        d2 = np.asarray(model(np.float32(a) * y, training=False))
        ref = np.float32(a) * d1
        err = float(np.abs(d2 - ref).max() / np.abs(ref).max())
        if not err <= 1e-4:  # NaN fails too
            raise ValueError(
                f"{source}: not homogeneous at scale {a:g} (relative error {err:.2e}); "
                "refusing to ship"
            )
    # saved beside the target first: a model over the size limit must not replace the bundled one
    staged = Path(dest) / f".{name}.staged.keras"
    try:
        save_model(model, staged, card, include_optimizer=False)
        if staged.stat().st_size > MAX_BYTES:
            raise ValueError(f"{source}: {name}.keras would be larger than 10 MB")
        path = Path(dest) / f"{name}.keras"
        os.replace(staged, path)
    finally:
        staged.unlink(missing_ok=True)
    return path


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m src_models.bundle", description=__doc__)
    p.add_argument("source", help="trained model file (e.g. runs/gray/gray.keras)")
    p.add_argument("--name", help="bundled name (default: the card's)")
    args = p.parse_args(argv)
    try:
        path = bundle_model(args.source, args.name)
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    print(f"bundled {path} ({path.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
