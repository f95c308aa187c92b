"""The paper's BF-DnCNN rebuilt from its numpy weights reproduces the paper's figures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from src_models import bench_quality as bq
from src_models.reference import load_reference, reference_files

ROOT = Path(__file__).resolve().parents[2]
ANCHORS = ROOT.parent / "shared" / "anchors" / "bf_dncnn_paper"
SET12 = ROOT.parent / "shared" / "data" / "eval" / "Set12"

needs_anchors = pytest.mark.skipif(
    not (ANCHORS / "bf_dncnn_0_100.npz").is_file() or not SET12.is_dir(),
    reason="the bf_dncnn_paper anchor weights or Set12 are not available",
)

# PSNR (dB) measured with the benchmark's own seeded noise at sigma 25 ([0,100] weights).
# For scale: DnCNN-S reports 30.18 / 33.06 on these two images, and the anchor README
# gives 30.29 as the Set12 mean of this model.
MEASURED_SIGMA25 = {"01.png": 29.76, "02.png": 32.97}


@pytest.fixture(scope="module")
def reference():
    return load_reference(ANCHORS / "bf_dncnn_0_100.npz")


@needs_anchors
def test_reference_files_lists_both_ranges_narrow_first():
    assert [p.name for p in reference_files(ANCHORS)] == ["bf_dncnn_0_55.npz", "bf_dncnn_0_100.npz"]
    assert reference_files(ANCHORS / "missing") == []


@needs_anchors
def test_reference_card_describes_the_paper_model(reference):
    card = reference.card
    assert reference.name == card.name == "BF-DnCNN (paper, [0,100])"
    assert card.channels == 1 and card.kind == "dncnn"
    assert card.receptive_field == 20  # 20 3x3 convolutions: 41x41, as the anchor README says
    assert card.parameters == 9 * 64 + 18 * (9 * 64 * 64 + 64) + 9 * 64
    assert card.sigma_range == (0.0, 100.0)
    assert "NOT shipped" in card.notes["shipped"]


@needs_anchors
@pytest.mark.parametrize("image", sorted(MEASURED_SIGMA25))
def test_reference_reproduces_its_set12_psnr_at_sigma_25(reference, image):
    sample = bq.Sample("Set12", image, SET12 / image, color=False)
    clean = bq.load_clean(sample)
    noisy = bq.make_noisy(clean, sample, 25)
    noisy_psnr, _ = bq.score(clean, noisy, False)
    out_psnr, out_ssim = bq.score(clean, reference.denoise(noisy, offset=0.0), False)
    assert noisy_psnr == pytest.approx(20.2, abs=0.5)
    assert out_psnr > noisy_psnr + 9.0
    assert out_psnr == pytest.approx(MEASURED_SIGMA25[image], abs=0.5)
    assert out_ssim > 0.8


@needs_anchors
def test_reference_is_positively_homogeneous(reference):
    rng = np.random.default_rng(0)
    y = rng.uniform(0.0, 1.0, size=(1, 48, 48, 1)).astype("float32")
    base = np.asarray(reference.model.predict_on_batch(y))
    for a in (0.01, 7.5):
        scaled = np.asarray(reference.model.predict_on_batch(a * y))
        np.testing.assert_allclose(scaled, a * base, rtol=1e-4, atol=1e-5 * a)


def test_load_reference_names_a_wrong_weight_file(tmp_path):
    bad = tmp_path / "bf_dncnn_0_55.npz"
    np.savez(bad, conv_00=np.zeros((3, 3, 1, 64), "float32"))
    with pytest.raises(ValueError, match="missing arrays"):
        load_reference(bad)
    with pytest.raises(FileNotFoundError, match="reference weights not found"):
        load_reference(tmp_path / "nothing.npz")
