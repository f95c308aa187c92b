"""The napari-bfcnn command: a batch with good, corrupt and already-done files."""

from __future__ import annotations

import numpy as np
import tifffile
from imageio import v3 as iio

from src_models.cli import main


def _noisy(shape, seed=0):
    rng = np.random.default_rng(seed)
    return np.clip(rng.normal(120, 25, size=shape), 0, 255)


def test_denoise_folder_writes_good_files_skips_bad_ones_and_reports_failure(
    model_dir, tmp_path, capsys
):
    src, out = tmp_path / "in", tmp_path / "out"
    src.mkdir()
    out.mkdir()
    tifffile.imwrite(src / "a.tif", _noisy((40, 48)).astype("uint16") * 100,
                     resolution=(2.5, 2.5), resolutionunit="CENTIMETER")
    iio.imwrite(src / "b.png", _noisy((32, 32)).astype("uint8"))
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
    assert (out / "d_denoised.png").read_bytes() == b"earlier result"  # never overwritten
    assert (src / "c.tif").read_bytes() == b"not a tiff at all"


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
