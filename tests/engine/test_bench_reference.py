"""The paper's BF-DnCNN rows are computed once, cached, and reused only when still valid."""

from __future__ import annotations

import csv
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from src_models import bench
from src_models.bench_quality import ImageScore, Sample
from src_models.bench_reference import (
    append_reference_rows,
    cached_reference_scores,
    read_reference_cache,
)

ANCHORS = Path(__file__).resolve().parents[3] / "shared" / "anchors" / "bf_dncnn_paper"
LABEL = "BF-DnCNN (paper, [0,55])"


def _score(image: str, sigma: float, crc: int, psnr: float = 30.0) -> ImageScore:
    return ImageScore("Set12", image, sigma, LABEL, "reference", psnr, 0.8, 1.0, crc)


def _samples(*names: str) -> list[Sample]:
    return [Sample("Set12", n, Path(n), False) for n in names]


def test_cached_rows_are_used_only_for_the_same_weights_and_the_same_noise(tmp_path):
    cache_path = tmp_path / "ref.csv"
    assert append_reference_rows(
        cache_path, [_score("a", 25, 11, 31.5), _score("b", 25, 12, 29.25)], {LABEL: "sha1"}
    ) == 2
    cache = read_reference_cache(cache_path)
    crcs = {("Set12", "a", 25.0): 11, ("Set12", "b", 25.0): 12}
    scores = cached_reference_scores(_samples("a", "b"), [25], LABEL, "sha1", cache, crcs)
    assert [(s.image, s.psnr, s.kind) for s in scores] == [
        ("a", 31.5, "reference"), ("b", 29.25, "reference")
    ]
    # other weights, other noise, or one image missing: the reference must be run again
    assert cached_reference_scores(_samples("a", "b"), [25], LABEL, "sha2", cache, crcs) is None
    stale = {**crcs, ("Set12", "b", 25.0): 99}
    assert cached_reference_scores(_samples("a", "b"), [25], LABEL, "sha1", cache, stale) is None
    assert cached_reference_scores(_samples("a", "c"), [25], LABEL, "sha1", cache, crcs) is None


def test_appending_skips_rows_already_cached_and_non_reference_rows(tmp_path):
    cache_path = tmp_path / "ref.csv"
    append_reference_rows(cache_path, [_score("a", 25, 11)], {LABEL: "sha1"})
    model_row = ImageScore("Set12", "a", 25, "gray", "model", 28.0, 0.7, 0.1, 11)
    added = append_reference_rows(
        cache_path, [_score("a", 25, 11), _score("a", 50, 13), model_row], {LABEL: "sha1"}
    )
    assert added == 1
    with open(cache_path, newline="") as f:
        assert [(r["image"], r["sigma"]) for r in csv.DictReader(f)] == [("a", "25"), ("a", "50")]


@pytest.mark.skipif(not ANCHORS.is_dir(), reason="needs ../shared/anchors/bf_dncnn_paper")
def test_second_benchmark_run_reads_the_reference_rows_and_denoises_only_the_crop(
    tmp_path, monkeypatch
):
    folder = tmp_path / "data" / "eval" / "Set12"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(2):
        iio.imwrite(folder / f"im{i}.png", rng.integers(30, 220, (48, 56), dtype=np.uint8))
    calls = []
    load = bench._load_reference

    def counting(path):
        den = load(path)
        run = den.denoise

        def denoise(*args, **kwargs):
            calls.append(den.name)
            return run(*args, **kwargs)

        den.denoise = denoise
        return den

    monkeypatch.setattr(bench, "_load_reference", counting)
    cache = tmp_path / "ref.csv"

    def run(out: Path) -> dict:
        bench.run(
            ["--data", str(tmp_path / "data"), "--out", str(out), "--quick", "--sections",
             "quality", "--datasets", "Set12", "--models", "--reference", "--reference-dir",
             str(ANCHORS), "--reference-csv", str(cache), "--baselines-csv",
             str(tmp_path / "none.csv")]
        )
        with open(out / "per_image.csv", newline="") as f:
            return {(r["image"], r["sigma"], r["method"]): r["psnr"]
                    for r in csv.DictReader(f) if r["kind"] == "reference"}

    first = run(tmp_path / "one")
    assert len(calls) == 2 * 2 * 3  # two references, two images, three sigmas
    assert len(read_reference_cache(cache)) == 12
    calls.clear()
    second = run(tmp_path / "two")
    assert len(calls) == 2  # one crop image per reference
    assert second.keys() == first.keys()
    for key, psnr in first.items():  # the cache keeps 4 decimals
        assert float(second[key]) == pytest.approx(float(psnr), abs=1e-4)
