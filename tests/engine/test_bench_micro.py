"""The microscopy benchmark: pair layout, affine-fit PSNR, GAT, baseline cache, the section."""

from __future__ import annotations

import csv
import json
import math

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile

from src_models import bench
from src_models import bench_micro as bm
from src_models.bench_docs import MARK_END, MARK_START, MICRO_END, MICRO_START, update_docs
from src_models.bench_report import Row, read_results, write_results

H, W = 48, 56


def _clean(seed: int) -> np.ndarray:
    """A smooth 8-bit-scale fluorescence-like pattern in [20, 220]."""
    yy, xx = np.mgrid[0:H, 0:W]
    img = 120 + 100 * np.sin(xx / (4.0 + seed)) * np.cos(yy / 6.0)
    return np.clip(img, 20, 220)


def _noisy(clean: np.ndarray, seed: int, gain: float = 4.0, read: float = 2.0) -> np.ndarray:
    """Poisson-Gaussian noise of ``gain`` units per photon and read noise ``read``."""
    rng = np.random.default_rng(seed)
    return gain * rng.poisson(clean / gain) + read * rng.standard_normal(clean.shape)


def _u8(x: np.ndarray) -> np.ndarray:
    return np.clip(np.round(x), 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def micro_dir(tmp_path_factory):
    """eval/FMD (gray png, RGB png, 3-plane float32 tif) and eval/W2S (3 uint8 tifs)."""
    root = tmp_path_factory.mktemp("micro_data")
    fmd, w2s = root / "eval" / "FMD", root / "eval" / "W2S"
    for d in (fmd, w2s):
        (d / "noisy").mkdir(parents=True)
        (d / "gt").mkdir(parents=True)
    c = [_clean(i) for i in range(3)]
    iio.imwrite(fmd / "gt" / "a_gray.png", _u8(c[0]))
    iio.imwrite(fmd / "noisy" / "a_gray.png", _u8(_noisy(c[0], 1)))
    rgb = np.stack(c, axis=-1)
    iio.imwrite(fmd / "gt" / "b_rgb.png", _u8(rgb))
    iio.imwrite(fmd / "noisy" / "b_rgb.png", _u8(_noisy(rgb, 2)))
    stack = np.stack([c[2], c[1], 0.5 * c[0]]).astype(np.float32)
    tifffile.imwrite(fmd / "gt" / "c_stack.tif", np.round(stack))
    tifffile.imwrite(fmd / "noisy" / "c_stack.tif", np.round(_noisy(stack, 3)).astype(np.float32))
    for i in range(3):  # W2S: noisy and clean stretched to 8 bit separately
        noisy = _noisy(c[i], 10 + i)
        iio.imwrite(w2s / "gt" / f"08{i}_0.tif", _u8(c[i]))
        iio.imwrite(w2s / "noisy" / f"08{i}_0.tif", _u8(0.7 * noisy + 15))
    return root


def _fake_baseline(method, noisy):
    """A cheap stand-in for BM3D/NLM: 3x3 box mean (NLM: half of it), sigma by method."""
    p = np.pad(np.asarray(noisy, dtype=np.float64), 1, mode="reflect")
    h, w = noisy.shape
    out = sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    factor = {"bm3d_est": 1.0, "bm3d_x2": 2.0, "bm3d_x4": 4.0}.get(method)
    if method == "nlm":
        out = 0.5 * (out + noisy)
    if method == "bm3d_x4":  # the oracle must pick x2 (best) over x4 (worse) and est
        out = 0.5 * (out + noisy)
    return out, (f"sigma={3.0 * factor:.3f}" if factor else "gain=1;read_sigma=1;offset=0")


# --- layout ------------------------------------------------------------------------------


def test_every_channel_is_a_gray_sample(micro_dir):
    names = [s.name for s in bm.micro_samples(micro_dir, "FMD")]
    assert names == [
        "a_gray.png",
        "b_rgb.png[0]",
        "b_rgb.png[1]",
        "b_rgb.png[2]",
        "c_stack.tif[0]",
        "c_stack.tif[1]",
        "c_stack.tif[2]",
    ]
    assert [s.name for s in bm.micro_samples(micro_dir, "FMD", limit=2)] == names[:2]
    assert len(bm.micro_samples(micro_dir, "W2S")) == 3


def test_load_pair_takes_the_right_plane_on_the_8bit_scale(micro_dir):
    samples = {s.name: s for s in bm.micro_samples(micro_dir, "FMD")}
    noisy, clean = bm.load_pair(samples["c_stack.tif[2]"])
    assert noisy.dtype == clean.dtype == np.float64 and clean.shape == (H, W)
    np.testing.assert_array_equal(clean, np.round(0.5 * _clean(0)).astype(np.float32))
    _, clean_g = bm.load_pair(samples["b_rgb.png[1]"])
    np.testing.assert_array_equal(clean_g, _u8(_clean(1)))


def test_a_noisy_file_without_its_clean_file_is_named(micro_dir, tmp_path):
    (tmp_path / "eval" / "W2S" / "noisy").mkdir(parents=True)
    (tmp_path / "eval" / "W2S" / "gt").mkdir(parents=True)
    iio.imwrite(tmp_path / "eval" / "W2S" / "noisy" / "x.tif", _u8(_clean(0)))
    with pytest.raises(FileNotFoundError, match="x.tif has no clean counterpart"):
        bm.micro_samples(tmp_path, "W2S")


# --- scores ------------------------------------------------------------------------------


def test_affine_fit_psnr_of_a_known_case():
    rng = np.random.default_rng(0)
    estimate = rng.uniform(20, 80, (40, 50))
    err = rng.normal(0, 4, estimate.shape)  # made orthogonal to the estimate and to 1
    basis = np.stack([estimate.ravel(), np.ones(estimate.size)], axis=1)
    err -= (basis @ np.linalg.lstsq(basis, err.ravel(), rcond=None)[0]).reshape(err.shape)
    clean = 2.5 * estimate + 30.0 + err  # inside (0, 255): no clipping
    a, b = bm.affine_fit(estimate, clean)
    assert a == pytest.approx(2.5, rel=1e-9) and b == pytest.approx(30.0, abs=1e-7)
    want = 10 * math.log10(255**2 / float(np.mean(err**2)))
    fit, plain, ssim = bm.micro_score(clean, estimate, plain=True)
    assert fit == pytest.approx(want, abs=1e-9)
    assert plain == pytest.approx(10 * math.log10(255**2 / np.mean((estimate - clean) ** 2)))
    assert plain < fit - 10 and 0 < ssim < 1
    assert bm.micro_score(clean, estimate, plain=False)[1] is None


def test_affine_fit_clips_before_and_after_and_handles_a_constant():
    clean = np.full((8, 8), 100.0)
    clean[0] = 250.0
    est = clean * 2.0  # 500 is clipped to 255 first: fit then maps {200, 255} to {100, 250}
    f = bm.fitted(est, clean)
    np.testing.assert_allclose(f, clean, atol=1e-9)
    assert bm.affine_fit(np.ones((4, 4)), np.arange(16.0).reshape(4, 4)) == (0.0, 7.5)


def test_gat_stabilises_variance_and_its_inverse_is_unbiased():
    rng = np.random.default_rng(1)
    for photons, gain, read, offset in [(3.0, 2.0, 1.0, 5.0), (20.0, 10.0, 3.0, 0.0)]:
        z = gain * rng.poisson(photons, 400_000) + offset + read * rng.standard_normal(400_000)
        d = bm.gat_forward(z, gain, read, offset)
        assert d.var() == pytest.approx(1.0, abs=0.05)
        back = bm.gat_inverse(np.array([d.mean()]), gain, read, offset)[0]
        assert back == pytest.approx(gain * photons + offset, rel=0.01)
        # without the exact-unbiased terms the algebraic inverse is biased low
        algebraic = (d.mean() * gain / 2) ** 2 / gain - 0.375 * gain - read**2 / gain + offset
        assert algebraic < back - 0.1 * gain


def test_vst_baseline_falls_back_when_the_noise_model_is_not_finite(monkeypatch):
    import src_models.noise_model as nm

    seen = []
    monkeypatch.setattr(bm, "_bm3d", lambda y, sigma: seen.append(sigma) or y)
    for gain, read, tag in [(0.0, float("nan"), "fallback sigma="), (0.0, 2.0, "gaussian")]:
        pg = nm.PoissonGaussian(gain=gain, read_sigma=read, offset=3.0)
        monkeypatch.setattr(nm, "estimate_poisson_gaussian", lambda y, pg=pg: pg)
        noisy = _noisy(_clean(0), 0)
        est, params = bm.run_micro_baseline("bm3d_vst", noisy)
        assert tag in params and np.array_equal(est, noisy)
    assert seen[0] == pytest.approx(bm._est_sigma(noisy)) and seen[1] == 2.0


# --- baseline cache ----------------------------------------------------------------------


def test_compute_micro_baselines_appends_resumes_and_records_the_command(
    micro_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(bm, "run_micro_baseline", _fake_baseline)
    samples = bm.micro_samples(micro_dir, "W2S")
    cache = tmp_path / "m.csv"
    n = len(bm.MICRO_BASELINES)
    assert bm.compute_micro_baselines(samples[:1], cache, command="cmd one") == n
    assert bm.compute_micro_baselines(samples, cache, command="cmd two") == 2 * n
    assert bm.compute_micro_baselines(samples, cache, command="cmd three") == 0
    lines = cache.read_text().splitlines()
    assert lines[0].startswith("# made by: cmd one (")
    assert lines[1].startswith("dataset,image,method,psnr,psnr_plain,ssim,params")
    assert sum(ln.startswith("# resumed by: cmd two") for ln in lines) == 1
    assert len([ln for ln in lines if not ln.startswith("#")]) == 1 + 3 * n
    rows = bm.read_micro_cache(cache)
    assert set(rows) == {("W2S", s.name, m) for s in samples for m in bm.MICRO_BASELINES}
    assert all(r["psnr_plain"] is None for r in rows.values())  # W2S: fitted only


def test_cached_scores_derive_the_oracle_row_and_skip_stale_rows(micro_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bm, "run_micro_baseline", _fake_baseline)
    samples = bm.micro_samples(micro_dir, "FMD", limit=1)
    cache = tmp_path / "m.csv"
    bm.compute_micro_baselines(samples, cache)
    rows = bm.read_micro_cache(cache)
    crc = rows[("FMD", "a_gray.png", "nlm")]["input_crc"]
    got = {s.method: s for s in bm.cached_micro_scores(samples, rows, {("FMD", "a_gray.png"): crc})}
    best = got[bm.micro_baseline_label("bm3d_best")]
    assert set(got) == {
        bm.micro_baseline_label(m) for m in ("nlm", "bm3d_est", "bm3d_vst", "bm3d_best")
    }
    est = rows[("FMD", "a_gray.png", "bm3d_est")]
    x4 = rows[("FMD", "a_gray.png", "bm3d_x4")]
    assert best.psnr == max(est["psnr"], rows[("FMD", "a_gray.png", "bm3d_x2")]["psnr"])
    assert best.psnr > x4["psnr"] and best.psnr_plain is not None  # FMD: plain PSNR too
    assert bm.best_sigma(rows, samples[0]) == 3.0  # est and x2 tie: the first, sigma=3
    warnings = []
    stale = bm.cached_micro_scores(samples, rows, {("FMD", "a_gray.png"): crc + 1}, warnings.append)
    assert stale == [] and "stale" in warnings[0]


def test_vst_rows_from_an_older_noise_estimate_are_skipped_then_recomputed(
    micro_dir, tmp_path, monkeypatch
):
    monkeypatch.setattr(bm, "run_micro_baseline", _fake_baseline)
    samples = bm.micro_samples(micro_dir, "FMD", limit=1)
    cache = tmp_path / "m.csv"
    bm.compute_micro_baselines(samples, cache)
    rows = bm.read_micro_cache(cache)
    key = ("FMD", "a_gray.png", "bm3d_vst")
    monkeypatch.setattr(bm, "vst_params", lambda y: "gain=1;read_sigma=1;offset=0")
    assert bm.stale_vst_rows(samples, rows) == set()  # the estimate the row was made with
    monkeypatch.setattr(bm, "vst_params", lambda y: "gain=2;read_sigma=1;offset=0")
    outdated = bm.stale_vst_rows(samples, rows)
    assert outdated == {key}
    crc = rows[key]["input_crc"]
    warnings = []
    got = bm.cached_micro_scores(samples, rows, {key[:2]: crc}, warnings.append, outdated)
    assert bm.micro_baseline_label("bm3d_vst") not in {s.method for s in got}
    assert "older noise estimate" in warnings[0]

    def new_vst(method, noisy):
        out, params = _fake_baseline(method, noisy)
        return out, ("gain=2;read_sigma=1;offset=0" if method == "bm3d_vst" else params)

    monkeypatch.setattr(bm, "run_micro_baseline", new_vst)
    assert bm.compute_micro_baselines(samples, cache, outdated=outdated) == 1
    rows = bm.read_micro_cache(cache)  # the appended row replaces the old one
    assert rows[key]["params"] == "gain=2;read_sigma=1;offset=0"
    assert bm.stale_vst_rows(samples, rows) == set()


# --- the section -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def micro_run(micro_dir, tmp_path_factory):
    """``--sections micro --limit 4 --compute-baselines`` with a tiny gray model and fakes."""
    from model_factory import tiny_model

    from src_models.modelfile import save_model

    folder = tmp_path_factory.mktemp("micro_models")
    model, card = tiny_model("dncnn", seed=0, name="tiny", channels=1, depth=3, width=8)
    path = save_model(model, folder / "tiny.keras", card)
    out = tmp_path_factory.mktemp("micro_out")
    cache = out.parent / f"{out.name}_micro.csv"

    def box(y, sigma):
        return _fake_baseline("bm3d_est", y)[0]

    argv = ["--data", str(micro_dir), "--out", str(out), "--sections", "micro", "--limit", "4"]
    argv += ["--models", str(path), "--micro-baselines-csv", str(cache), "--compute-baselines"]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bm, "run_micro_baseline", _fake_baseline)
        mp.setattr(bm, "vst_params", lambda y: _fake_baseline("bm3d_vst", y)[1])
        mp.setattr(bm, "_bm3d", box)
        bench.run(argv)
    return out, cache


def test_micro_section_writes_its_files(micro_run):
    out, cache = micro_run
    for name in ["results.csv", "results.md", "per_image_micro.csv", "meta.json"]:
        assert (out / name).is_file(), name
    for name in ["psnr_micro.png", "crops_micro_FMD.png", "crops_micro_W2S.png"]:
        assert (out / name).stat().st_size > 1000, name
    meta = json.loads((out / "meta.json").read_text())
    assert meta["micro"] == {"FMD": 4, "W2S": 3}
    assert "--sections micro" in meta["command"]
    assert cache.read_text().startswith("# made by: python -m src_models.bench --data")
    md = (out / "results.md").read_text()
    assert "## Microscopy (FMD, W2S)" in md and "Protocol: clean 8-bit" not in md
    assert "Channel images: FMD 4, W2S 3." in md
    assert "| method | FMD PSNR fit (dB) | FMD PSNR plain (dB) | FMD SSIM fit |" in md
    assert "| published: noisy input | 27.50 | – | – | 18.90 | – |" in md
    assert "| published: BM3D (best of three σ per image) | 28.70 | – | – | 27.50 | – |" in md


def test_micro_rows_average_the_per_image_scores(micro_run, micro_dir):
    out, _ = micro_run
    rows = [r for r in read_results(out / "results.csv") if r.section == "micro"]
    methods = {(r.dataset, r.method, r.kind) for r in rows if r.kind != "published"}
    for d in ("FMD", "W2S"):
        assert {(m, k) for dd, m, k in methods if dd == d} == {
            ("noisy", "noisy"),
            ("tiny", "model"),
            ("NLM (skimage, est. σ)", "baseline"),
            ("BM3D (est. σ)", "baseline"),
            ("BM3D + GAT (est. gain, read noise)", "baseline"),
            ("BM3D (best of three σ per image)", "baseline"),
        }
    with open(out / "per_image_micro.csv", newline="") as f:
        per = [r for r in csv.DictReader(f) if r["method"] == "noisy" and r["dataset"] == "W2S"]
    want = []
    for s in bm.micro_samples(micro_dir, "W2S"):
        noisy, clean = bm.load_pair(s)
        want.append(bm.micro_score(clean, noisy, plain=False)[0])
    assert [float(r["psnr"]) for r in per] == pytest.approx(want)
    noisy_w2s = next(r for r in rows if r.dataset == "W2S" and r.kind == "noisy")
    assert noisy_w2s.psnr == pytest.approx(np.mean(want), abs=1e-3)  # 6 digits in the csv
    assert noisy_w2s.psnr_plain is None
    noisy_fmd = next(r for r in rows if r.dataset == "FMD" and r.kind == "noisy")
    assert noisy_fmd.psnr_plain is not None and noisy_fmd.n_images == noisy_fmd.n_total == 4


def test_psnr_plain_survives_the_results_csv(tmp_path):
    path = write_results(
        [Row("micro", "FMD", "x", "model", psnr=30.0, psnr_plain=28.5)], tmp_path / "r.csv"
    )
    (row,) = read_results(path)
    assert row.psnr_plain == 28.5 and row.sigma is None


def test_micro_docs_block_leaves_the_main_block_and_cards(micro_run, tmp_path):
    out, _ = micro_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# P\n\n{MARK_START}\nmain table\n{MARK_END}\n\n## After\n")
    cards = tmp_path / "cards"
    cards.mkdir()
    assert update_docs(out, readme, cards) == [readme]
    text = readme.read_text()
    assert "main table" in text and text.rstrip().endswith("## After")
    assert text.index(MARK_END) < text.index("## Microscopy benchmark") < text.index(MICRO_START)
    block = text[text.index(MICRO_START) : text.index(MICRO_END)]
    rows = read_results(out / "results.csv")
    tiny = next(r for r in rows if r.dataset == "W2S" and r.method == "tiny")
    assert f"{tiny.psnr:.2f}" in block and "--sections micro" in block
    update_docs(out, readme, cards)  # a second run replaces the block, no second section
    assert readme.read_text().count(MICRO_START) == 1 and not any(cards.iterdir())


# --- real baselines ----------------------------------------------------------------------


@pytest.mark.slow
def test_real_micro_baselines_remove_poisson_gaussian_noise():
    pytest.importorskip("bm3d")
    clean = _clean(1)
    noisy = _noisy(clean, 5, gain=6.0, read=2.0)
    before = bm.micro_score(clean, noisy, plain=True)[0]
    got = {}
    for method in bm.MICRO_BASELINES:
        est, params = bm.run_micro_baseline(method, noisy)
        assert est.shape == clean.shape and params
        got[method] = bm.micro_score(clean, est, plain=True)[0]
        assert got[method] > before + 3, (method, got[method], before)
    assert "gain=" in bm.run_micro_baseline("bm3d_vst", noisy)[1]


def test_auto_microscopy_row_picks_the_correlated_model_only_for_correlated_noise():
    from types import SimpleNamespace

    from synthetic import correlated_counts

    def fake(value):
        # the value, times the transforms averaged: says which model ran, and how
        return SimpleNamespace(
            denoise=lambda y, offset=None, tta=1: np.full(y.shape, value * tta)
        )

    run = bm.auto_microscopy_runner(fake(1.0), fake(2.0))
    correlated = correlated_counts((128, 128)).astype(np.float64) / 256.0  # 8-bit scale
    white = np.random.default_rng(0).poisson(100.0, (128, 128)).astype(np.float64)
    assert run(correlated)[0, 0] == 2.0
    assert run(white)[0, 0] == 1.0
    run_tta = bm.auto_microscopy_runner(fake(1.0), fake(2.0), tta=8)  # the TTA row's runner
    assert (run_tta(correlated)[0, 0], run_tta(white)[0, 0]) == (16.0, 8.0)


def test_micro_crop_option_picks_the_image_of_each_set_shown_in_the_figure(
    micro_dir, tmp_path, monkeypatch
):
    import src_models.bench_micro_report as bmr

    shown = []
    monkeypatch.setattr(bmr, "micro_crops", lambda kept, *a: shown.extend(sorted(kept)))
    monkeypatch.setattr(bm, "run_micro_baseline", _fake_baseline)
    argv = ["--data", str(micro_dir), "--out", str(tmp_path / "o"), "--sections", "micro"]
    argv += ["--limit", "3", "--models", "gray-fast", "--micro-crop", "b_rgb.png[1]"]
    argv += ["--micro-baselines-csv", str(tmp_path / "m.csv")]
    bench.run(argv)
    assert shown == [("FMD", "b_rgb.png[1]"), ("W2S", "080_0.tif")]  # W2S: its first image


def test_micro_run_replaces_only_the_cards_microscopy_block(micro_run, tmp_path):
    out, _ = micro_run
    readme = tmp_path / "README.md"
    readme.write_text("# P\n")
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "tiny.keras").write_bytes(b"")  # a bundled model of that name (not read)
    page = f"# tiny\n\nmain tables\n\n{MICRO_START}\nold micro table\n{MICRO_END}\n"
    (cards / "tiny.md").write_text(page)
    assert update_docs(out, readme, cards) == [readme, cards / "tiny.md"]
    text = (cards / "tiny.md").read_text()
    tiny = next(
        r for r in read_results(out / "results.csv") if r.dataset == "W2S" and r.method == "tiny"
    )
    assert text.startswith("# tiny\n\nmain tables\n\n") and "old micro table" not in text
    block = text[text.index(MICRO_START) : text.index(MICRO_END)]
    assert f"{tiny.psnr:.2f}" in block and "--sections micro" in block
    (cards / "tiny.md").write_text("# tiny\n\nmain tables\n")  # a page without the block
    update_docs(out, readme, cards)
    update_docs(out, readme, cards)
    text = (cards / "tiny.md").read_text()
    assert text.count(MICRO_START) == 1 and text.startswith("# tiny\n\nmain tables\n\n")
