"""The napari-bfcnn command: a batch with good, corrupt and already-done files."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from imageio import v3 as iio

from src_models.cli import _expand_inputs, main


def _noisy(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(120, 25, size=shape), 0, 255)


def test_denoise_folder_writes_good_files_skips_bad_ones_and_reports_failure(
    model_dir, tmp_path, capsys
):
    from src_models.registry import load_model

    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    a_in, b_in = _noisy((40, 48)).astype("uint16") * 100, _noisy((32, 32)).astype("uint8")
    tifffile.imwrite(src / "a.tif", a_in, resolution=(2.5, 2.5), resolutionunit="CENTIMETER")
    iio.imwrite(src / "b.png", b_in)
    (src / "c.tif").write_bytes(b"not a tiff at all")
    iio.imwrite(src / "d.png", _noisy((32, 32), 1).astype("uint8"))
    (out / "d_denoised.png").write_bytes(b"earlier result")

    code = main(["denoise", str(src), "--out", str(out), "--model", "pyramid", "--quiet"])

    assert code == 1  # something failed: the exit code says so
    err = capsys.readouterr()
    text = err.out + err.err
    assert "c.tif" in text and "cannot read image" in text
    assert "d_denoised.png exists" in text
    a = tifffile.imread(out / "a_denoised.tif")
    assert a.dtype == np.uint16 and a.shape == (40, 48)
    with tifffile.TiffFile(out / "a_denoised.tif") as tif:
        assert tif.pages[0].tags["XResolution"].value == (5, 2)
    b = iio.imread(out / "b_denoised.png")
    assert b.dtype == np.uint8 and b.shape == (32, 32)
    den = load_model("pyramid")
    assert np.abs(a.astype(int) - den.denoise(a_in, offset="auto")).max() <= 1  # 16-bit: camera
    assert np.abs(b.astype(int) - den.denoise(b_in)).max() <= 1  # 8-bit: no black level
    assert (out / "d_denoised.png").read_bytes() == b"earlier result"  # never overwritten
    assert (src / "c.tif").read_bytes() == b"not a tiff at all"


@pytest.mark.parametrize(
    ("flag", "value", "engine"),
    [("--tta", "8", {"tta": 8}), ("--strength", "0.5", {"strength": 0.5})],
)
def test_denoise_tta_and_strength_write_the_engines_result(
    model_dir, tmp_path, flag, value, engine
):
    from src_models.registry import load_model

    img = _noisy((40, 48)).astype("uint16") * 100
    tifffile.imwrite(tmp_path / "a.tif", img)
    out = tmp_path / "out"
    code = main(["denoise", str(tmp_path / "a.tif"), "--out", str(out), "--model", "pyramid",
                 flag, value, "--offset", "none", "--quiet"])
    assert code == 0
    written = tifffile.imread(out / "a_denoised.tif")
    den = load_model("pyramid")
    assert np.array_equal(written, den.denoise(img, **engine))
    assert not np.array_equal(written, den.denoise(img))


def test_denoise_strength_out_of_range_is_refused_before_any_work(tmp_path, capsys):
    with pytest.raises(SystemExit):
        main(["denoise", str(tmp_path / "a.tif"), "--out", str(tmp_path), "--strength", "1.5"])
    assert "--strength: must be a number from 0 to 1" in capsys.readouterr().err


def test_denoise_refuses_to_overwrite_its_input(model_dir, tmp_path, capsys):
    iio.imwrite(tmp_path / "x.png", _noisy((16, 16)).astype("uint8"))
    before = (tmp_path / "x.png").read_bytes()
    code = main(["denoise", str(tmp_path / "x.png"), "--out", str(tmp_path), "--suffix", "",
                 "--model", "pyramid", "--quiet"])
    assert code == 1
    assert "overwrite the input" in capsys.readouterr().out
    assert (tmp_path / "x.png").read_bytes() == before


def test_models_lists_installed_models(model_dir, capsys):
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "pyramid" in out and "multiscale" in out and "tiny random multiscale" in out


def test_denoise_keeps_ome_tiff_metadata_and_writes_jpeg_as_png_without_overwriting(
    model_dir, tmp_path, capsys
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    stack = (_noisy((2, 3, 24, 20)) * 100).astype("uint16")
    tifffile.imwrite(src / "s.ome.tif", stack, ome=True,
                     metadata={"axes": "ZCYX", "PhysicalSizeX": 0.25, "PhysicalSizeY": 0.25})
    iio.imwrite(src / "p.jpg", _noisy((24, 24, 3)).astype("uint8"))
    iio.imwrite(src / "q.jpg", _noisy((24, 24, 3), 1).astype("uint8"))
    (out / "q_denoised.png").write_bytes(b"earlier result")

    code = main(["denoise", str(src), "--out", str(out), "--model", "pyramid", "--quiet"])

    assert code == 1
    assert "q_denoised.png exists" in capsys.readouterr().out
    assert (out / "q_denoised.png").read_bytes() == b"earlier result"
    assert not (out / "s.ome_denoised.tif").exists()  # OME readers go by ".ome.tif"
    with tifffile.TiffFile(out / "s_denoised.ome.tif") as tif:
        assert tif.series[0].axes == "ZCYX" and tif.series[0].shape == (2, 3, 24, 20)
        assert 'PhysicalSizeX="0.25"' in tif.ome_metadata
        written = tif.asarray()
    from src_models.registry import load_model

    want = load_model("pyramid").denoise(stack, channel_axis=1, offset="auto")  # C, not RGB
    assert np.abs(written.astype(int) - want).max() <= 1
    p = iio.imread(out / "p_denoised.png")
    assert p.dtype == np.uint8 and p.shape == (24, 24, 3)


def test_denoise_zarr_chunk_by_chunk_equals_in_memory(model_dir, tmp_path, capsys):
    zarr = pytest.importorskip("zarr", minversion="3")  # zarr_format=, .metadata
    from src_models.registry import load_model

    img = (_noisy((3, 70, 66)) * 100).astype("uint16")
    src = zarr.open_array(str(tmp_path / "big.zarr"), mode="w", shape=img.shape,
                          chunks=(1, 32, 32), dtype=img.dtype, zarr_format=2)
    src[:] = img
    src.attrs["scale"] = [2.0, 0.5, 0.5]
    out = tmp_path / "out"

    assert main(["denoise", str(tmp_path / "big.zarr"), "--out", str(out), "--model",
                 "pyramid", "--quiet"]) == 0
    res = zarr.open_array(str(out / "big_denoised.zarr"), mode="r")
    assert res.dtype == np.uint16 and res.chunks == (1, 32, 32)
    assert res.metadata.zarr_format == 2  # as the input
    assert res.attrs["scale"] == [2.0, 0.5, 0.5]
    ref = load_model("pyramid").denoise(img, offset="auto")  # uint16: camera data
    assert np.abs(res[:].astype(int) - ref).max() <= 1
    assert not list(out.glob(".*partial"))

    capsys.readouterr()
    assert main(["denoise", str(tmp_path / "big.zarr"), "--out", str(out), "--model",
                 "pyramid", "--quiet"]) == 1  # exists: refused
    assert "big_denoised.zarr exists" in capsys.readouterr().out
    assert main(["denoise", str(tmp_path / "big.zarr"), "--out", str(tmp_path), "--suffix", "",
                 "--model", "pyramid", "--quiet", "--overwrite"]) == 1  # never over its input
    assert np.array_equal(zarr.open_array(str(tmp_path / "big.zarr"), mode="r")[:], img)


def test_large_tiff_goes_chunk_by_chunk_and_keeps_resolution(model_dir, tmp_path, monkeypatch):
    from src_models import files
    from src_models.registry import load_model

    monkeypatch.setattr(files, "LAZY_TIFF_BYTES", 0)  # every TIFF counts as large
    monkeypatch.setattr(files, "TIFF_TILE", 16)
    img = (_noisy((2, 50, 40)) * 100).astype("uint16")
    tifffile.imwrite(tmp_path / "big.tif", img, imagej=True, resolution=(4.0, 4.0),
                     metadata={"axes": "ZYX", "spacing": 3.0, "unit": "um"})
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "big.tif"), "--out", str(out), "--model", "pyramid",
                 "--tile", "16", "--quiet"]) == 0
    with tifffile.TiffFile(out / "big_denoised.tif") as tif:
        res = tif.asarray()
        assert tif.series[0].axes == "ZYX" and tif.imagej_metadata["spacing"] == 3.0
        assert tif.pages[0].tags["XResolution"].value == (4, 1)
    ref = load_model("pyramid").denoise(img, offset="auto")  # uint16: camera data
    assert res.dtype == np.uint16 and np.abs(res.astype(int) - ref).max() <= 1

    tifffile.imwrite(tmp_path / "rgb.tif", _noisy((40, 36, 3)).astype("uint8"),
                     photometric="rgb", resolution=(2.0, 2.0))
    assert main(["denoise", str(tmp_path / "rgb.tif"), "--out", str(out), "--model", "color",
                 "--quiet"]) == 0
    with tifffile.TiffFile(out / "rgb_denoised.tif") as tif:
        assert tif.pages[0].is_tiled and tif.series[0].shape == (40, 36, 3)
        assert tif.pages[0].tags["XResolution"].value == (2, 1)


def test_denoise_on_a_dask_scheduler_address(model_dir, tmp_path):
    distributed = pytest.importorskip("distributed")
    from src_models.registry import load_model

    iio.imwrite(tmp_path / "a.png", _noisy((40, 44)).astype("uint8"))
    tifffile.imwrite(tmp_path / "b.tif", (_noisy((2, 36, 30), 1) * 100).astype("uint16"))
    out = tmp_path / "out"
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=False,
                                  dashboard_address=None) as cluster:
        code = main(["denoise", str(tmp_path / "a.png"), str(tmp_path / "b.tif"), "--out",
                     str(out), "--model", "pyramid", "--scheduler", cluster.scheduler_address,
                     "--quiet"])
    assert code == 0
    den = load_model("pyramid")
    a = iio.imread(out / "a_denoised.png")
    assert np.abs(a.astype(int) - den.denoise(iio.imread(tmp_path / "a.png"))).max() <= 1
    b = tifffile.imread(out / "b_denoised.tif")
    b_ref = den.denoise(tifffile.imread(tmp_path / "b.tif"), offset="auto")  # uint16: camera data
    assert np.abs(b.astype(int) - b_ref).max() <= 1


def test_camera_data_default_to_an_automatic_black_level_so_an_offset_comes_back_unchanged(
    model_dir, tmp_path, capsys
):
    """uint16 camera counts: without --offset the black level is estimated and removed."""
    src, out_auto, out_none = tmp_path / "in", tmp_path / "auto", tmp_path / "none"
    src.mkdir()
    counts = (_noisy((48, 40)) * 10).astype("uint16") + 1000  # far from 0: nothing clips
    tifffile.imwrite(src / "low.tif", counts + 100)
    tifffile.imwrite(src / "high.tif", counts + 2100)  # the same frame, 2000 counts more offset
    base = ["--model", "pyramid", "--quiet"]
    assert main(["denoise", str(src), "--out", str(out_auto), *base]) == 0
    assert main(["denoise", str(src), "--out", str(out_none), "--offset", "none", *base]) == 0
    def read(folder):
        return [tifffile.imread(folder / f"{n}_denoised.tif").astype(int) for n in ("low", "high")]

    low, high = read(out_auto)
    assert np.abs(high - low - 2000).max() <= 1  # the offset passed through (rounding only)
    low, high = read(out_none)
    assert np.abs(high - low - 2000).max() > 1  # without it the network sees the offset


def test_a_bad_offset_is_refused_before_any_work(model_dir, tmp_path, capsys):
    iio.imwrite(tmp_path / "x.png", _noisy((16, 16)).astype("uint8"))
    code = main(["denoise", str(tmp_path / "x.png"), "--out", str(tmp_path / "o"),
                 "--offset", "dark", "--quiet"])
    assert code == 2 and "--offset must be 'auto', 'none' or a number" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.usefixtures("bundled_only")
def test_camera_files_with_correlated_noise_get_the_model_trained_for_it():
    from synthetic import correlated_counts

    from src_models.denoise_cmd import BY_DATA, plan_for_data

    frame = correlated_counts((256, 256))
    assert plan_for_data(frame, None, None, BY_DATA)[1:] == ("microscopy-correlated", False, "auto")
    white = np.random.default_rng(0).poisson(400.0, (256, 256)).astype(np.uint16) + 100
    assert plan_for_data(white, None, None, BY_DATA)[1] == "microscopy"
    assert plan_for_data(frame, None, "gray", BY_DATA)[1] == "gray"  # a model named is kept


def test_bench_subcommand_passes_its_options_to_the_benchmark(monkeypatch):
    from src_models import bench

    seen = []
    monkeypatch.setattr(bench, "main", lambda argv: seen.append(list(argv)) or 0)
    assert main(["bench", "--data", "../shared/data", "--out", "o", "--quick"]) == 0
    assert seen == [["--data", "../shared/data", "--out", "o", "--quick"]]  # was "unrecognized"


def test_planar_rgb_tiff_is_denoised_as_colour_with_its_layout_kept(model_dir, tmp_path):
    from src_models.denoise_cmd import BY_DATA, plan_for_data
    from src_models.registry import load_model

    rgb = _noisy((3, 40, 48), 2).astype("uint8")  # stored channels first: axes "SYX"
    tifffile.imwrite(tmp_path / "p.tif", rgb, photometric="rgb", planarconfig="separate")
    _, name, alpha, _ = plan_for_data(rgb, 0, None, BY_DATA, samples=True)
    assert load_model(name).channels == 3 and not alpha
    assert plan_for_data(rgb, 0, None, BY_DATA)[1] != name  # a C axis of 3: channels, not colour
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "p.tif"), "--out", str(out), "--quiet"]) == 0
    written = tifffile.imread(out / "p_denoised.tif")
    assert written.shape == rgb.shape
    np.testing.assert_array_equal(written, load_model(name).denoise(rgb, channel_axis=0))


def test_gray_and_alpha_png_keeps_its_alpha_and_denoises_the_gray(model_dir, tmp_path):
    from src_models.registry import load_model

    la = np.stack([_noisy((40, 48), 3), np.full((40, 48), 200.0)], axis=-1).astype("uint8")
    iio.imwrite(tmp_path / "la.png", la)
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "la.png"), "--out", str(out), "--model", "pyramid",
                 "--quiet"]) == 0
    written = iio.imread(out / "la_denoised.png")
    assert written.shape == la.shape
    np.testing.assert_array_equal(written[..., 1], la[..., 1])  # alpha untouched
    np.testing.assert_array_equal(written[..., 0], load_model("pyramid").denoise(la[..., 0]))


def test_an_existing_name_with_glob_characters_is_that_file_not_a_pattern(tmp_path):
    for name in ("img[1].tif", "img1.tif", "what?.png"):
        (tmp_path / name).write_bytes(b"")
    files, missing = _expand_inputs([str(tmp_path / "img[1].tif"), str(tmp_path / "what?.png")])
    assert [f.name for f in files] == ["img[1].tif", "what?.png"] and missing == []
    files, missing = _expand_inputs([str(tmp_path / "img*.tif"), str(tmp_path / "no[1].tif")])
    assert [f.name for f in files] == ["img1.tif", "img[1].tif"]  # a pattern still globs
    assert missing == [str(tmp_path / "no[1].tif")]


def test_a_folder_input_skips_hidden_files_and_earlier_outputs(tmp_path):
    names = ["a.tif", "a_denoised.tif", "._a.tif", ".a.partial.tif", "s.ome.tif",
             "s_denoised.ome.tif", "p.jpg", "p_denoised.png", "notes.txt"]
    for name in names:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "z.zarr").mkdir()
    (tmp_path / "z_denoised.zarr").mkdir()

    files, _ = _expand_inputs([str(tmp_path)], lazy=True, skip_suffix="_denoised")
    assert [f.name for f in files] == ["a.tif", "p.jpg", "s.ome.tif", "z.zarr"]
    files, _ = _expand_inputs([str(tmp_path)], skip_suffix="")  # no suffix: nothing is output
    assert [f.name for f in files] == [
        "a.tif", "a_denoised.tif", "p.jpg", "p_denoised.png", "s.ome.tif", "s_denoised.ome.tif"
    ]
    files, _ = _expand_inputs([str(tmp_path / "a_denoised.tif")], skip_suffix="_denoised")
    assert [f.name for f in files] == ["a_denoised.tif"]  # named explicitly: kept


def test_inputs_that_would_share_an_output_are_refused_before_any_work(tmp_path, capsys):
    for day in ("day1", "day2"):
        (tmp_path / day).mkdir()
        iio.imwrite(tmp_path / day / "img.png", _noisy((16, 16)).astype("uint8"))
    iio.imwrite(tmp_path / "p.jpg", _noisy((16, 16, 3)).astype("uint8"))
    iio.imwrite(tmp_path / "p.png", _noisy((16, 16, 3)).astype("uint8"))
    out = tmp_path / "out"

    code = main(["denoise", str(tmp_path / "day1"), str(tmp_path / "day2"), str(tmp_path / "p.jpg"),
                 str(tmp_path / "p.png"), "--out", str(out), "--overwrite", "--quiet"])

    assert code == 2
    err = capsys.readouterr().err.splitlines()
    day1, day2 = tmp_path / "day1" / "img.png", tmp_path / "day2" / "img.png"
    assert f"error: {day1}, {day2} would all be written to {out / 'img_denoised.png'}" in err
    p_jpg, p_png = tmp_path / "p.jpg", tmp_path / "p.png"
    assert f"error: {p_jpg}, {p_png} would all be written to {out / 'p_denoised.png'}" in err
    assert not out.exists()


def test_an_unknown_model_is_reported_once_before_reading_any_file(model_dir, tmp_path, capsys):
    for name in ("a.png", "b.png"):
        iio.imwrite(tmp_path / name, _noisy((16, 16)).astype("uint8"))
    code = main(["denoise", str(tmp_path / "a.png"), str(tmp_path / "b.png"), "--out",
                 str(tmp_path / "o"), "--model", "nope", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("unknown model 'nope'") == 1 and "pyramid" in err  # lists the available
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(("axis", "index"), [(0, 0), (2, 2), (-1, 2), (-3, 0)])
def test_a_channel_axis_in_range_counts_from_either_end(axis, index):
    from src_models.denoise_cmd import plan_for_data

    assert plan_for_data(np.zeros((3, 8, 8), np.uint8), axis, "gray", None)[0] == index


@pytest.mark.parametrize("axis", [3, -4])
def test_an_out_of_range_channel_axis_is_an_error_not_wrapped_around(axis):
    from src_models.denoise_cmd import plan_for_data

    with pytest.raises(ValueError, match=rf"channel axis {axis} is out of range .* -3 to 2"):
        plan_for_data(np.zeros((3, 8, 8), np.uint8), axis, "gray", None)


def test_a_tile_off_the_size_multiple_denoises_each_lazy_tiff_chunk_once(
    model_dir, tmp_path, monkeypatch
):
    from src_models import files
    from src_models.registry import load_model

    monkeypatch.setattr(files, "LAZY_TIFF_BYTES", 0)  # every TIFF counts as large
    den = load_model("pyramid")
    assert 5 % den.card.size_multiple  # the tile is off the model's grid
    assert 5 < den.card.receptive_field  # and under the overlap, which chunks never are
    windows = []
    real = den.predict_batch
    monkeypatch.setattr(den, "predict_batch", lambda x: windows.append(x.tobytes()) or real(x))
    img = (_noisy((60, 56)) * 100).astype("uint16")
    tifffile.imwrite(tmp_path / "big.tif", img)
    out = tmp_path / "out"
    assert main(["denoise", str(tmp_path / "big.tif"), "--out", str(out), "--model", "pyramid",
                 "--tile", "5", "--quiet"]) == 0
    assert len(windows) > 1 and len(set(windows)) == len(windows)  # none computed twice
    ref = den.denoise(img, offset="auto")
    assert np.abs(tifffile.imread(out / "big_denoised.tif").astype(int) - ref).max() <= 1
