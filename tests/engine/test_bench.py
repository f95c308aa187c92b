"""The benchmark: seeded noise, baseline cache, the --quick run's outputs, generated docs."""

from __future__ import annotations

import csv
import json
import shutil
from collections import defaultdict
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest

from src_models import bench, bench_baselines
from src_models import bench_quality as bq
from src_models.bench_docs import MARK_END, MARK_START, update_docs
from src_models.bench_report import read_results

SETS = {"BSD68": (1, 3), "Set12": (1, 2), "CBSD68": (3, 3), "McMaster": (3, 2)}


def _image(h: int, w: int, channels: int, seed: int) -> np.ndarray:
    """Smooth 8-bit pattern plus texture, kept inside [15, 240] so clipping barely matters."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    base = 128 + 70 * np.sin(xx / (5 + seed)) * np.cos(yy / 7.0)
    img = base[..., None] + rng.normal(0, 5, (h, w, channels))
    return np.clip(img, 15, 240).astype(np.uint8).squeeze()


def _fake_baseline(method, noisy, sigma, color):
    """A cheap stand-in for BM3D/NLM (BM3D needs seconds even on tiny images): 3x3 box mean."""
    pad = [(1, 1), (1, 1)] + ([(0, 0)] if noisy.ndim == 3 else [])
    p = np.pad(np.asarray(noisy, dtype=np.float64), pad, mode="reflect")
    h, w = noisy.shape[:2]
    out = sum(p[dy : dy + h, dx : dx + w] for dy in range(3) for dx in range(3)) / 9.0
    return out if method != "nlm" else 0.5 * (out + noisy)


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    """A tiny copy of the test-set layout: eval/<set>/imN.png, 64x72 pixels."""
    root = tmp_path_factory.mktemp("data")
    for name, (channels, count) in SETS.items():
        folder = root / "eval" / name
        folder.mkdir(parents=True)
        for i in range(count):
            iio.imwrite(folder / f"im{i}.png", _image(64, 72, channels, i + 1))
    return root


def _tiny_model(config, name: str):
    """A tiny random model and its card (receptive field measured), as the trainer writes them."""
    import keras

    from src_models.architectures import (
        build_model,
        parameter_count,
        receptive_field,
        size_multiple,
    )
    from src_models.config import ModelCard

    keras.utils.set_random_seed(0)
    model = build_model(config, name=name)
    for v in model.trainable_variables:  # a random last layer: the output is not the input
        if v.path.endswith("kernel") and float(np.abs(v.numpy()).max()) == 0.0:
            v.assign(np.random.default_rng(1).normal(0, 0.05, tuple(v.shape)).astype("float32"))
    multiple = size_multiple(config)
    card = ModelCard(
        name=name,
        description=f"tiny random {config.kind} for tests",
        channels=config.channels,
        kind=config.kind,
        parameters=parameter_count(model),
        receptive_field=receptive_field(model, multiple),
        size_multiple=multiple,
    )
    return model, card


@pytest.fixture(scope="module")
def model_files(tmp_path_factory) -> dict[str, Path]:
    """A tiny gray DnCNN and a tiny colour U-Net saved as gray.keras / color.keras."""
    from src_models.config import DnCNNConfig, UNetConfig
    from src_models.modelfile import save_model

    folder = tmp_path_factory.mktemp("bench_models")
    configs = {
        "gray": DnCNNConfig(channels=1, depth=4, width=8),
        "color": UNetConfig(channels=3, scales=2, width=8, convs=1),
    }
    out = {}
    for name, config in configs.items():
        model, card = _tiny_model(config, name)
        out[name] = save_model(model, folder / f"{name}.keras", card)
    return out


@pytest.fixture(scope="module")
def quick_run(data_dir, model_files, tmp_path_factory):
    """One --quick run (tiny models, baselines computed by the fake) and its output folder."""
    out = tmp_path_factory.mktemp("bench_out")
    cache = out.parent / f"{out.name}_baselines.csv"
    argv = [
        "--data",
        str(data_dir),
        "--out",
        str(out),
        "--quick",
        "--models",
        str(model_files["gray"]),
        str(model_files["color"]),
        "--gray-on-color",
        "--baselines-csv",
        str(cache),
        "--compute-baselines",
    ]
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(bench_baselines, "run_baseline", _fake_baseline)
        bench.run(argv)
    return out, cache


def _per_image(out: Path) -> list[dict]:
    with open(out / "per_image.csv", newline="") as f:
        return list(csv.DictReader(f))


# --- seeded noise ------------------------------------------------------------------------


def test_noise_is_fixed_per_dataset_image_and_sigma(data_dir):
    s = bq.dataset_samples(data_dir, "BSD68")
    clean = bq.load_clean(s[0])
    a = bq.make_noisy(clean, s[0], 25)
    np.testing.assert_array_equal(a, bq.make_noisy(clean, s[0], 25))
    other = bq.load_clean(s[1])
    assert not np.allclose(a - clean, bq.make_noisy(other, s[1], 25) - other)  # other image
    b = bq.make_noisy(clean, s[0], 50)
    assert np.std(b - clean) == pytest.approx(50, rel=0.05)
    assert np.std(a - clean) == pytest.approx(25, rel=0.05)
    assert not np.allclose((b - clean) / 50, (a - clean) / 25)  # other sigma, other draw
    assert a.dtype == np.float32 and b.min() < 0  # float, not clipped


def test_noise_seed_rejects_fractional_sigma():
    with pytest.raises(ValueError, match="whole non-negative"):
        bq.noise_seed("BSD68", "a.png", 2.5)


def test_dataset_samples_take_the_first_images_and_name_unknown_sets(data_dir):
    names = [s.name for s in bq.dataset_samples(data_dir, "CBSD68", limit=2)]
    assert names == ["im0.png", "im1.png"]
    assert bq.dataset_samples(data_dir, "CBSD68")[0].color
    with pytest.raises(ValueError, match="unknown test set 'Kodak'"):
        bq.dataset_samples(data_dir, "Kodak")


# --- baseline cache ----------------------------------------------------------------------


def test_compute_baselines_appends_only_missing_rows(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_baselines, "run_baseline", _fake_baseline)
    samples = bq.dataset_samples(data_dir, "Set12")
    cache = tmp_path / "b.csv"
    assert bench_baselines.compute_baselines(samples[:1], [25], cache) == 3
    assert bench_baselines.compute_baselines(samples, [25], cache) == 3  # only the new image
    assert bench_baselines.compute_baselines(samples, [25], cache) == 0
    lines = cache.read_text().splitlines()
    assert lines[0].startswith("dataset,image,sigma,method,psnr,ssim,seconds")
    assert len(lines) == 1 + 6
    rows = bench_baselines.read_cache(cache)
    assert set(rows) == {
        ("Set12", s.name, 25.0, m) for s in samples for m in bench_baselines.BASELINES
    }


def test_cached_rows_computed_on_other_noise_are_ignored(data_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(bench_baselines, "run_baseline", _fake_baseline)
    samples = bq.dataset_samples(data_dir, "Set12")[:1]
    cache = tmp_path / "b.csv"
    bench_baselines.compute_baselines(samples, [25], cache)
    rows = bench_baselines.read_cache(cache)
    crc = next(iter(rows.values()))["input_crc"]
    key = ("Set12", samples[0].name, 25.0)
    assert len(bench_baselines.cached_scores(samples, [25], rows, {key: crc})) == 3
    warnings = []
    got = bench_baselines.cached_scores(samples, [25], rows, {key: crc + 1}, warn=warnings.append)
    assert got == [] and "stale" in warnings[0]


# --- the --quick run ---------------------------------------------------------------------


def test_quick_run_writes_tables_csv_and_plots(quick_run):
    out, _ = quick_run
    for name in ["results.csv", "results.md", "per_image.csv", "meta.json"]:
        assert (out / name).is_file(), name
    for d in SETS:
        assert (out / f"psnr_vs_sigma_{d}.png").stat().st_size > 1000
        assert (out / f"crops_{d}.png").stat().st_size > 1000
    md = (out / "results.md").read_text()
    assert md.startswith("# Benchmark results")
    assert "python -m src_models.bench" in md and "CPU cores" in md
    assert "| method | σ=5 | σ=25 | σ=50 |" in md
    assert "| gray (per channel) |" in md and "| CBM3D |" in md
    assert json.loads((out / "meta.json").read_text())["quick"] is True


def test_quick_run_has_the_expected_rows(quick_run):
    out, _ = quick_run
    rows = read_results(out / "results.csv")
    quality = defaultdict(set)
    for r in rows:
        if r.section == "quality" and r.kind != "published":
            quality[r.dataset].add((r.method, r.kind, r.sigma))
    for d in ("BSD68", "Set12"):
        methods = {(m, k) for m, k, _ in quality[d]}
        assert methods == {
            ("noisy", "noisy"),
            ("gray", "model"),
            ("gray (TTA \u00d78)", "model"),
            ("BM3D", "baseline"),
            ("BM3D (est. sigma)", "baseline"),
            ("NLM (skimage)", "baseline"),
        }
        assert {s for _, _, s in quality[d]} == {5.0, 25.0, 50.0}
    for d in ("CBSD68", "McMaster"):
        methods = {(m, k) for m, k, _ in quality[d]}
        assert methods == {
            ("noisy", "noisy"),
            ("color", "model"),
            ("gray (per channel)", "model-per-channel"),
            ("CBM3D", "baseline"),
            ("CBM3D (est. sigma)", "baseline"),
            ("NLM (skimage)", "baseline"),
        }
    published = {(r.dataset, r.method, r.sigma): r.psnr for r in rows if r.kind == "published"}
    assert published[("BSD68", "BM3D (published)", 25.0)] == 28.57
    assert published[("CBSD68", "CDnCNN (published)", 50.0)] == 27.92
    speed = {(r.method, r.shape) for r in rows if r.section == "speed"}
    assert speed == {("gray", "512x512"), ("color", "512x512")}
    assert all(r.mpix_s > 0 for r in rows if r.section == "speed")
    assert not any(r.section == "memory" for r in rows)  # --quick has no 8192² run


def test_tta_rows_are_the_models_averaged_over_flips(quick_run, model_files, data_dir):
    """The default models get a twin row with 8x test-time augmentation, scored on the
    same noisy inputs; it is the engine's tta=8 output, not the plain one."""
    from src_models.registry import load_model

    out, _ = quick_run
    per = {(r["dataset"], r["image"], float(r["sigma"]), r["method"]): float(r["psnr"])
           for r in _per_image(out)}
    sample = bq.dataset_samples(data_dir, "BSD68", limit=1)[0]
    clean = bq.load_clean(sample)
    noisy = bq.make_noisy(clean, sample, 25.0)
    den = load_model(str(model_files["gray"]))
    want = bq.score(clean, den.denoise(noisy, offset=0.0, tta=8), color=False)[0]
    got = per[("BSD68", sample.name, 25.0, "gray (TTA \u00d78)")]
    assert got == pytest.approx(want, abs=1e-4)
    assert got != pytest.approx(per[("BSD68", sample.name, 25.0, "gray")], abs=1e-4)


def test_results_csv_keeps_enough_digits_to_round_like_results_md(tmp_path):
    from src_models.bench_report import Row, write_results

    row = Row(section="quality", dataset="BSD68", method="NLM", kind="baseline", sigma=25.0,
              psnr=27.224999, ssim=0.7654321)
    back = read_results(write_results([row], tmp_path / "r.csv"))[0]
    assert f"{back.psnr:.2f}" == f"{row.psnr:.2f}" == "27.22"
    assert back.psnr == pytest.approx(row.psnr, abs=1e-9)


def test_noisy_input_scores_20_2_db_at_sigma_25(quick_run):
    out, _ = quick_run
    rows = read_results(out / "results.csv")
    noisy = [r for r in rows if r.kind == "noisy" and r.sigma == 25.0]
    assert len(noisy) == 4
    for r in noisy:  # 20 log10(255 / 25) = 20.17; tiny images wobble a little
        assert r.psnr == pytest.approx(20.17, abs=0.25), r.dataset
        assert r.n_images == r.n_total == SETS[r.dataset][1]


def test_every_method_saw_the_same_noisy_input(quick_run):
    out, _ = quick_run
    crcs = defaultdict(set)
    methods = defaultdict(set)
    for r in _per_image(out):
        key = (r["dataset"], r["image"], r["sigma"])
        crcs[key].add(r["input_crc"])
        methods[key].add(r["method"])
    assert len(crcs) == sum(n for _, n in SETS.values()) * 3
    for key, values in crcs.items():
        assert len(values) == 1, key
        assert len(methods[key]) >= 5  # noisy, a model, three baselines


def test_later_runs_read_baselines_from_the_cache(
    quick_run, data_dir, model_files, tmp_path, monkeypatch
):
    out1, cache = quick_run
    before = cache.read_text()

    def refuse(*args):
        raise AssertionError("baselines must come from the cache")

    monkeypatch.setattr(bench_baselines, "run_baseline", refuse)
    monkeypatch.setattr(bench, "_bm3d_crop", lambda *a: None)
    out2 = tmp_path / "out2"
    bench.run(
        [
            "--data",
            str(data_dir),
            "--out",
            str(out2),
            "--quick",
            "--sections",
            "quality",
            "--datasets",
            "Set12",
            "--models",
            str(model_files["gray"]),
            "--baselines-csv",
            str(cache),
        ]
    )
    assert cache.read_text() == before

    def bm3d(path):
        return {
            r.sigma: r.psnr
            for r in read_results(path / "results.csv")
            if r.dataset == "Set12" and r.method == "BM3D"
        }

    assert bm3d(out2) == bm3d(out1) and len(bm3d(out2)) == 3


def _run_with_baselines_of_one_image(quick_run, data_dir, model_files, tmp_path, image: str):
    """A quick Set12 run whose baseline cache holds the rows of ``image`` only."""
    _, cache = quick_run
    lines = cache.read_text().splitlines()
    assert lines[0].startswith("# made by: python -m src_models.bench --data")  # provenance
    header = next(ln for ln in lines if not ln.startswith("#"))
    partial = tmp_path / "partial.csv"
    partial.write_text(
        "\n".join([header] + [ln for ln in lines if ln.startswith(f"Set12,{image},")]) + "\n"
    )
    out = tmp_path / "out"
    args = ["--data", str(data_dir), "--out", str(out), "--quick", "--sections", "quality"]
    args += ["--datasets", "Set12", "--models", str(model_files["gray"])]
    bench.run(args + ["--baselines-csv", str(partial)])
    return out


def test_partly_cached_baselines_are_marked_with_their_coverage(
    quick_run, data_dir, model_files, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench, "_bm3d_crop", lambda *a: None)
    out = _run_with_baselines_of_one_image(quick_run, data_dir, model_files, tmp_path, "im0.png")
    rows = [r for r in read_results(out / "results.csv") if r.method == "BM3D"]
    assert {(r.n_images, r.n_total) for r in rows} == {(1, 2)}
    md = (out / "results.md").read_text()
    assert "| BM3D (1/2 images) |" in md
    assert "σ=25: 1/2" in md


def test_partly_cached_baselines_are_compared_with_models_on_the_same_images(
    quick_run, data_dir, model_files, tmp_path, monkeypatch
):
    monkeypatch.setattr(bench, "_bm3d_crop", lambda *a: None)
    out = _run_with_baselines_of_one_image(quick_run, data_dir, model_files, tmp_path, "im1.png")
    with open(out / "per_image.csv", newline="") as f:
        own = {
            float(r["sigma"]): float(r["psnr"])
            for r in csv.DictReader(f)
            if r["image"] == "im1.png" and r["method"] == "gray"
        }
    rows = read_results(out / "results.csv")
    paired = [
        r for r in rows if r.section == "paired" and r.note == "BM3D" and r.method == "gray"
    ]
    assert {r.sigma for r in paired} == set(own) and len(own) == 3
    for r in paired:  # the model's score on the one image BM3D covers, not its 2-image mean
        assert r.n_images == 1 and r.psnr == pytest.approx(own[r.sigma], abs=1e-4)
    full = {r.sigma: r.psnr for r in rows if r.section == "quality" and r.method == "gray"}
    assert any(abs(full[s] - own[s]) > 1e-3 for s in own)
    md = (out / "results.md").read_text()
    quality = [r for r in rows if r.section == "quality"]
    bm3d25 = next(r for r in quality if r.method == "BM3D" and r.sigma == 25)
    assert f"| BM3D | 25 | 1/2 | {bm3d25.psnr:.2f}" in md.replace("**", "")


# --- docs --------------------------------------------------------------------------------


def test_update_docs_refuses_quick_runs_and_fills_readme_and_card(quick_run, model_files, tmp_path):
    out, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text(f"# Project\n\nintro\n\n{MARK_START}\nold table\n{MARK_END}\n\n## After\n")
    cards = tmp_path / "pretrained"
    cards.mkdir()
    shutil.copy(model_files["gray"], cards / "gray.keras")
    with pytest.raises(ValueError, match="--quick"):
        update_docs(out, readme, cards)
    written = update_docs(out, readme, cards, force=True)
    assert written == [readme, cards / "gray.md"]
    text = readme.read_text()
    assert "old table" not in text and text.startswith("# Project\n\nintro")
    assert text.rstrip().endswith("## After")
    rows = read_results(out / "results.csv")
    gray25 = next(r for r in rows if r.dataset == "BSD68" and r.method == "gray" and r.sigma == 25)
    block = text[text.index(MARK_START) : text.index(MARK_END)]
    assert f"{gray25.psnr:.2f}" in block and "| noisy input |" in block
    card = (cards / "gray.md").read_text()
    assert card.startswith("# gray") and "receptive field" in card and "parameters" in card
    assert f"{gray25.psnr:.2f}" in card and "512x512 (Mpix/s)" in card
    assert not (cards / "color.md").exists()  # only bundled models get a card page


def test_update_docs_appends_a_section_when_the_readme_has_no_markers(quick_run, tmp_path):
    out, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text("# Project\n")
    update_docs(out, readme, tmp_path, force=True)
    text = readme.read_text()
    assert text.index("## Benchmark") < text.index(MARK_START) < text.index(MARK_END)


# --- real baselines, speed and memory ----------------------------------------------------


@pytest.mark.slow
def test_real_baselines_remove_noise():
    pytest.importorskip("bm3d")
    rng = np.random.default_rng(0)
    clean = _image(48, 48, 1, 3).astype(np.float64)
    noisy = (clean + 25 * rng.standard_normal(clean.shape)).astype(np.float32)
    before = bq.score(clean, noisy, False)[0]
    for method in bench_baselines.BASELINES:
        out = bench_baselines.run_baseline(method, noisy, 25, False)
        assert out.shape == clean.shape
        assert bq.score(clean, out, False)[0] > before + 4, method


@pytest.mark.slow
def test_baselines_computed_in_worker_processes_match_the_benchmark_noise(data_dir, tmp_path):
    pytest.importorskip("bm3d")
    samples = bq.dataset_samples(data_dir, "Set12")
    cache = tmp_path / "b.csv"
    assert bench_baselines.compute_baselines(samples, [25], cache, workers=2) == 6
    rows = bench_baselines.read_cache(cache)
    for s in samples:
        crc = bq.input_crc(bq.make_noisy(bq.load_clean(s), s, 25))
        noisy_psnr = bq.score(bq.load_clean(s), bq.make_noisy(bq.load_clean(s), s, 25), False)[0]
        for m in bench_baselines.BASELINES:
            row = rows[("Set12", s.name, 25.0, m)]
            assert row["input_crc"] == crc
            assert row["psnr"] > noisy_psnr + 4


def test_throughput_reports_mpix_per_second(model_files):
    from src_models.bench_speed import load_denoiser, throughput

    sec, mpix, runs = throughput(load_denoiser(str(model_files["color"])), (2, 64, 64), repeats=2)
    assert runs == 2 and sec > 0
    assert mpix == pytest.approx(2 * 64 * 64 / 1e6 / sec)


@pytest.mark.slow
def test_memory_run_reports_peak_rss_from_a_fresh_process(model_files):
    from src_models.bench_speed import measure_memory

    r = measure_memory(str(model_files["gray"]), size=256, timeout=300)
    assert r["shape"] == "256x256" and r["channels"] == 1
    assert r["peak_rss_mb"] >= r["loaded_rss_mb"] > 50  # TensorFlow alone takes more
    assert r["mpix_s"] > 0


def test_dask_memory_run_reports_the_out_of_core_path_from_a_fresh_process(model_files):
    from src_models.bench_speed import measure_dask_memory

    r = measure_dask_memory(str(model_files["gray"]), size=256, workers=0, timeout=300)
    assert r["method"].endswith("(dask, threads)") and r["shape"] == "256x256"
    assert r["mpix_s"] > 0 and r["peak_rss_mb"] > 50  # TensorFlow alone is hundreds of MB


def test_card_names_a_previous_stage_by_the_recipe_that_builds_it():
    from src_models.bench_docs import _base_text

    assert _base_text("runs/gray-2/gray.keras") == (
        "runs/gray-2/gray.keras (the previous stage, built by "
        "`src_models/recipes/stages/gray-2.yaml`)"
    )
    assert _base_text("runs/mine/x.keras") == "runs/mine/x.keras"  # no such stage recipe
    assert _base_text("gray") == "gray" and _base_text(None) == "–"
    assert _base_text("src_models/pretrained/gray.keras") == (
        "src_models/pretrained/gray.keras (the bundled `gray` model)"
    )


def test_card_architecture_names_the_pedestal_only_for_opponent_models():
    from types import SimpleNamespace

    from src_models.bench_docs import _architecture_text
    from src_models.config import UNetConfig

    def text(**arch):
        return _architecture_text(SimpleNamespace(recipe=SimpleNamespace(
            architecture=UNetConfig(**arch)), kind="unet"))

    assert "pedestal" not in text(channels=1)
    opp = text(channels=3, channel_mode="opponent", pedestal_chroma_window=33)
    assert "pedestal_window 129" in opp and "pedestal_chroma_window 33" in opp


def test_card_page_of_a_fine_tuned_model_names_its_own_validation_score():
    # fine-tuning scores on held-out pairs named by the method, not on a sigma: the page
    # (and so the bioimage.io export's documentation) must not need a number there
    from src_models.bench_docs import card_markdown
    from src_models.config import ModelCard

    page = card_markdown(ModelCard(name="m", val_psnr={"r2r": 31.5, "pair": 30.25}), [], {})
    assert "| validation PSNR | pair: 30.25 dB, r2r: 31.50 dB |" in page


def test_card_names_the_loss_weighting_and_gives_short_trainings_in_minutes():
    from src_models.bench_docs import card_markdown
    from src_models.config import ModelCard, RecipeConfig

    recipe = RecipeConfig.model_validate({
        "name": "m", "architecture": {"kind": "dncnn"},
        "training": {"loss_weighting": "inverse_noise", "weighting_floor": 25},
    })
    page = card_markdown(ModelCard(name="m", recipe=recipe, training_time_s=178.0), [], {})
    assert "mse loss weighted by 1/(input noise variance + 25²)" in page
    assert "| training time | 3 min |" in page
    plain = recipe.model_copy(deep=True)
    plain.training.loss_weighting = "none"
    page = card_markdown(ModelCard(name="m", recipe=plain, training_time_s=4320.0), [], {})
    assert "mse loss, lr" in page and "weighted" not in page
    assert "| training time | 1.2 h |" in page


def test_a_run_without_microscopy_keeps_the_cards_micro_block(quick_run, model_files, tmp_path):
    from src_models.bench_docs import MICRO_END, MICRO_START

    out, _ = quick_run
    readme = tmp_path / "README.md"
    readme.write_text("# P\n")
    cards = tmp_path / "pretrained"
    cards.mkdir()
    shutil.copy(model_files["gray"], cards / "gray.keras")
    (cards / "gray.md").write_text(f"# gray\n\nold\n\n{MICRO_START}\nmicro table\n{MICRO_END}\n")
    update_docs(out, readme, cards, force=True)
    text = (cards / "gray.md").read_text()
    assert "receptive field" in text and "\nold\n" not in text
    assert text.endswith(f"{MICRO_START}\nmicro table\n{MICRO_END}\n")
