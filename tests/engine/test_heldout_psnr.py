"""tools/heldout_psnr.py: the command behind the README's held-out comparisons of stages."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

TOOL = Path(__file__).resolve().parents[2] / "tools" / "heldout_psnr.py"


@pytest.fixture(scope="module")
def tool():
    spec = importlib.util.spec_from_file_location("heldout_psnr", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _recipe(tmp_path: Path) -> Path:
    from skimage import data, io

    folder = tmp_path / "train"
    folder.mkdir()
    for i, image in enumerate((data.camera(), data.moon(), data.coins(), data.page())):
        io.imsave(folder / f"{i}.png", image[:96, :96])
    path = tmp_path / "r.yaml"
    path.write_text(
        "name: m\narchitecture: {kind: dncnn, channels: 1, depth: 3, width: 8}\n"
        f"data: {{train: [{folder}], val_fraction: 0.25}}\n"
    )
    return path


def test_a_model_that_returns_its_input_scores_exactly_as_the_noisy_input(tool, tmp_path):
    from model_factory import architecture_config, tiny_model

    from src_models.architectures import build_model
    from src_models.modelfile import save_model

    _, card = tiny_model("dncnn", name="identity", channels=1, depth=3, width=8)
    # a new residual network's last layer is zero: it starts as D(y) = y
    model = build_model(architecture_config("dncnn", channels=1, depth=3, width=8))
    path = save_model(model, tmp_path / "identity.keras", card)
    scores = tool.heldout_scores(_recipe(tmp_path), [path], (0.0, 5.0, 25.0), crop=64)
    noisy, identity = scores["noisy input"], scores[str(path)]
    assert set(noisy) == {0.0, 5.0, 25.0}
    for s in (5.0, 25.0):
        assert identity[s] == pytest.approx(noisy[s], abs=1e-4)
    # 8-bit σ on [0, 1] images: PSNR about 20 log10(255 / σ) on unclipped noise
    assert noisy[25.0] == pytest.approx(20 * np.log10(255 / 25), abs=0.5)
    assert noisy[5.0] > noisy[25.0] + 13
