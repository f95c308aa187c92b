"""Exports: SavedModel (float + uint8), builtin-only TFLite and an offline-valid bioimage.io zip.

Every architecture kind (small random models) and every bundled architecture (one
model of each: bundled models that share a graph export alike) is exported,
reloaded and compared with the Keras model on a noisy image in [0, 1].
"""

from __future__ import annotations

import io
import socket
import zipfile

import numpy as np
import pytest
from model_factory import tiny_model

from src_models.export import (
    TOLERANCE,
    ExportError,
    export_model,
    output_path,
    parse_formats,
    test_image,
)
from src_models.export_bioimageio import halo_and_min_size, package_name, validate_package
from src_models.export_tf import (
    dynamic_upsampling,
    load_tflite,
    run_saved_model,
    tflite_op_names,
    write_saved_model,
    write_tflite,
)
from src_models.registry import BUNDLED_DIR, load_model

test_image.__test__ = False  # a helper named test_*, not a test

KINDS = {
    # every architecture kind and every custom layer: ScaleNorm, (un)shuffle, gates, pyramids
    "dncnn": ("dncnn", {"channels": 1, "depth": 4, "width": 8}),
    "dncnn-unshuffle": ("dncnn", {"channels": 3, "depth": 3, "width": 8, "unshuffle": 2}),
    "resnet-gates": (
        "resnet",
        {"channels": 1, "blocks": 1, "width": 8, "expand": 8, "gate": True, "squeeze_excite": True},
    ),
    "unet-unshuffle": (
        "unet",
        {"channels": 3, "scales": 2, "width": 8, "convs": 1, "unshuffle": 2},
    ),
    "multiscale-laplacian": ("multiscale", {"channels": 1, "levels": 3, "depth": 3, "width": 8}),
    "multiscale-gaussian": (
        "multiscale",
        {"channels": 2, "levels": 2, "depth": 3, "width": 8, "pyramid": "gaussian"},
    ),
}
BUNDLED = sorted(BUNDLED_DIR.glob("*.keras"))


def _one_per_architecture(paths):
    """The first bundled model of each distinct architecture: export depends on the graph only."""
    from src_models.modelfile import read_card

    seen, out = set(), []
    for p in paths:
        arch = read_card(p).recipe.architecture.model_dump_json()
        if arch not in seen:
            seen.add(arch)
            out.append(p)
    return out


BUNDLED_ARCHITECTURES = _one_per_architecture(BUNDLED)
BUILTIN_ONLY = {"CUSTOM", "DELEGATE"}  # plus any "Flex..." op: TF ops the runtime lacks


def _keras(model, x):
    import keras

    return np.asarray(keras.ops.convert_to_numpy(model(x, training=False)))


@pytest.fixture(scope="module", params=list(KINDS), ids=list(KINDS))
def exported(request, tmp_path_factory):
    """A tiny model of each kind with its SavedModel and free-shape TFLite file."""
    kind, kwargs = KINDS[request.param]
    model, card = tiny_model(kind, seed=3, name=request.param, **kwargs)
    folder = tmp_path_factory.mktemp(request.param)
    write_saved_model(model, folder / "sm", card.channels, card.size_multiple)
    write_tflite(model, folder / "m.tflite", card.channels)
    return model, card, folder


def test_saved_model_float_endpoint_reproduces_keras_for_other_sizes_and_batches(exported):
    model, card, folder = exported
    m = card.size_multiple
    x = test_image(card.channels, 8 * m)
    assert np.abs(run_saved_model(folder / "sm", x) - _keras(model, x)).max() < TOLERANCE
    wide = np.concatenate([test_image(card.channels, 12 * m, seed=s)[:, : 4 * m] for s in (1, 2)])
    assert wide.shape == (2, 4 * m, 12 * m, card.channels)
    assert np.abs(run_saved_model(folder / "sm", wide) - _keras(model, wide)).max() < TOLERANCE


def test_saved_model_uint8_endpoint_rounds_and_clips_like_original_bfcnn(exported):
    model, card, folder = exported
    m = card.size_multiple
    x = np.clip(test_image(card.channels, 8 * m) * 255.0, 0, 255).astype(np.uint8)
    out = run_saved_model(folder / "sm", x)
    want = np.clip(np.rint(_keras(model, x.astype(np.float32))), 0, 255)
    assert out.dtype == np.uint8 and out.shape == x.shape
    diff = np.abs(out.astype(int) - want.astype(int))
    assert diff.max() <= 1 and (diff == 0).mean() > 0.999  # ±1 only at .5 rounding ties
    assert out.min() >= 0 and out.max() <= 255


def test_saved_model_uint8_endpoint_reflect_pads_odd_sizes_and_crops_back(exported):
    """Any H, W: padded at the bottom and right to the next multiple by reflection, run,
    cropped back, rounded half to even and clipped to 0-255 (as tf.round and np.rint do)."""
    model, card, folder = exported
    m = card.size_multiple
    h, w = 4 * m + 3, 4 * m + 1
    noisy = test_image(card.channels, 4 * m + 8, seed=4)[:, :h, :w]
    x = np.clip(np.rint(noisy * 255.0), 0, 255).astype(np.uint8)
    out = run_saved_model(folder / "sm", x)
    assert out.shape == x.shape and out.dtype == np.uint8
    pad = ((0, 0), (0, (-h) % m), (0, (-w) % m), (0, 0))
    padded = np.pad(x.astype(np.float32), pad, mode="reflect")
    want = np.clip(np.rint(_keras(model, padded)[:, :h, :w]), 0, 255).astype(int)
    diff = np.abs(out.astype(int) - want)
    assert diff.max() <= 1 and (diff == 0).mean() > 0.99  # ±1 only at .5 rounding ties
    assert np.abs(out.astype(int) - x.astype(int)).max() > 1  # the model did filter


def test_tflite_uses_builtin_ops_only(exported):
    _, _, folder = exported
    ops = tflite_op_names(folder / "m.tflite")
    assert "CONV_2D" in ops
    assert not {o for o in ops if o.startswith("Flex") or o in BUILTIN_ONLY}, ops


def test_tflite_reproduces_keras_after_resizing_its_input(exported):
    model, card, folder = exported
    m = card.size_multiple
    runner = load_tflite(folder / "m.tflite")
    for x in (test_image(card.channels, 8 * m), test_image(card.channels, 4 * m, seed=5)):
        assert np.abs(runner(x) - _keras(model, x)).max() < TOLERANCE


def test_fixed_size_tflite_has_that_input_shape(tmp_path):
    model, card = tiny_model(*KINDS["unet-unshuffle"][:1], **KINDS["unet-unshuffle"][1])
    write_tflite(model, tmp_path / "f.tflite", card.channels, size=32)
    runner = load_tflite(tmp_path / "f.tflite")
    assert tuple(runner._input["shape_signature"]) == (1, 32, 32, 3)
    x = test_image(3, 32)
    assert np.abs(runner(x) - _keras(model, x)).max() < TOLERANCE


def test_dynamic_upsampling_patch_is_undone():
    model, _ = tiny_model(*KINDS["multiscale-laplacian"][:1], **KINDS["multiscale-laplacian"][1])
    ups = [
        la for la in model._flatten_layers(recursive=True) if type(la).__name__ == "UpSampling2D"
    ]
    assert ups
    with dynamic_upsampling(model):
        assert all("_resize_images" in vars(la) for la in ups)
    assert not any("_resize_images" in vars(la) for la in ups)


@pytest.mark.parametrize("path", BUNDLED_ARCHITECTURES, ids=[p.stem for p in BUNDLED_ARCHITECTURES])
def test_bundled_model_exports_to_saved_model_and_builtin_tflite(path, tmp_path):
    results = export_model(path, "saved_model,tflite", tmp_path)
    assert [r.format for r in results] == ["saved_model", "tflite"]
    assert all(r.max_error < TOLERANCE for r in results)
    assert results[0].path == tmp_path / f"{path.stem}_saved_model"
    assert (results[0].path / "saved_model.pb").is_file()
    ops = tflite_op_names(results[1].path)
    assert not {o for o in ops if o.startswith("Flex") or o in BUILTIN_ONLY}, ops


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """The gray-fast bundled model exported to a bioimage.io zip."""
    out = tmp_path_factory.mktemp("bioimageio")
    (result,) = export_model("gray-fast", "bioimageio", out)
    return result


def test_bioimageio_package_is_valid_and_holds_what_consumers_need(package):
    import yaml

    assert package.path.name == "gray-fast.bioimageio.zip" and package.max_error < TOLERANCE
    with zipfile.ZipFile(package.path) as zf:
        names = set(zf.namelist())
        rdf = yaml.safe_load(zf.read("rdf.yaml"))
        doc = zf.read("README.md").decode()
        cover = zf.read("cover.png")
    assert {"rdf.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"} <= names
    assert rdf["weights"]["tensorflow_saved_model_bundle"]["source"] == "tf_saved_model.zip"
    assert rdf["name"] == "BF-CNN gray-fast" and rdf["license"] == "MIT"
    assert rdf["cite"][0]["doi"] == "10.48550/arXiv.1906.05478"
    assert rdf["authors"] == [{"name": "napari-bfcnn developers"}]
    (inp,), (out,) = rdf["inputs"], rdf["outputs"]
    assert inp["id"] == "noisy" and out["id"] == "denoised"
    assert [a["type"] for a in inp["axes"]] == ["batch", "space", "space", "channel"]
    card = load_model("gray-fast").card
    halo = -(-card.receptive_field // card.size_multiple) * card.size_multiple
    assert card.size_multiple == 8 and halo >= card.receptive_field > 0
    assert out["axes"][1]["halo"] == halo  # the receptive field rounded up to the multiple
    assert inp["axes"][1]["size"] == {"min": 2 * halo + 8, "step": 8}  # 2 halos + one multiple
    assert "# gray-fast" in doc and "## Validation" in doc and "multiples of 8" in doc
    assert cover[:8] == b"\x89PNG\r\n\x1a\n"
    validate_package(package.path)  # again, from the written file


def test_bioimageio_validation_never_opens_a_connection(package, monkeypatch):
    attempts = []

    def refuse(self, address, *args, **kwargs):
        attempts.append(address)
        raise OSError("network disabled by the test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", lambda host, *a, **k: refuse(None, host))
    validate_package(package.path)
    assert attempts == []


def test_bioimageio_validation_rejects_a_tampered_package(package, tmp_path):
    bad = tmp_path / "bad.zip"
    with zipfile.ZipFile(package.path) as src, zipfile.ZipFile(bad, "w") as dst:
        for item in src.infolist():
            data = src.read(item.filename)
            if item.filename == "test_output.npy":
                buf = io.BytesIO()
                np.save(buf, np.load(io.BytesIO(data)) + 1.0)
                data = buf.getvalue()
            dst.writestr(item, data)
    with pytest.raises(ExportError, match="validation failed"):
        validate_package(bad)


def test_halo_covers_the_receptive_field_in_whole_multiples():
    from src_models.modelfile import read_card

    card = read_card(BUNDLED_DIR / "gray.keras")
    card.receptive_field, card.size_multiple = 105, 16
    assert halo_and_min_size(card) == (112, 240)
    card.receptive_field, card.size_multiple = 13, 1
    assert halo_and_min_size(card) == (13, 27)


def test_package_name_keeps_only_characters_bioimageio_allows():
    assert package_name("my.model_v2") == "BF-CNN my-model_v2"


def test_parse_formats_normalises_orders_and_rejects_unknown_names():
    want = ["saved_model", "tflite", "bioimageio"]
    assert parse_formats("tflite, SavedModel,bioimage.io") == want
    assert parse_formats(["tflite", "tflite"]) == ["tflite"]
    with pytest.raises(ValueError, match="onnx.*choose from saved_model, tflite, bioimageio"):
        parse_formats("tflite,onnx")


def test_existing_output_is_refused_before_any_work(model_dir, tmp_path):
    (tmp_path / "resnet.tflite").write_bytes(b"keep me")
    with pytest.raises(ValueError, match="resnet.tflite exist"):
        export_model("resnet", "saved_model,tflite", tmp_path)
    assert (tmp_path / "resnet.tflite").read_bytes() == b"keep me"
    assert not output_path(tmp_path, "resnet", "saved_model").exists()


def _off_by(monkeypatch, fmt: str, delta: float = 1e-3) -> None:
    """Make the reloaded SavedModel or TFLite file compute ``delta`` more than it does."""
    from src_models import export_tf

    if fmt == "saved_model":
        real_run = export_tf.run_saved_model
        monkeypatch.setattr(
            export_tf, "run_saved_model", lambda path, x: real_run(path, x) + delta
        )
    else:
        real_load = export_tf.load_tflite
        monkeypatch.setattr(
            export_tf, "load_tflite", lambda path: lambda x: real_load(path)(x) + delta
        )


@pytest.mark.parametrize(
    "fmt, what", [("saved_model", "the SavedModel"), ("tflite", "the TFLite model")]
)
def test_an_export_off_by_more_than_the_tolerance_fails_and_writes_nothing(
    model_dir, tmp_path, monkeypatch, fmt, what
):
    _off_by(monkeypatch, fmt)
    with pytest.raises(ExportError, match=rf"{what} differs from the Keras model by 0\.001 "):
        export_model("gray", fmt, tmp_path)
    assert list(tmp_path.iterdir()) == []  # neither the file nor the staging folder is left


def test_a_failed_check_leaves_an_existing_export_it_would_overwrite(
    model_dir, tmp_path, monkeypatch
):
    (tmp_path / "gray.tflite").write_bytes(b"keep me")
    _off_by(monkeypatch, "tflite")
    with pytest.raises(ExportError, match="the TFLite model differs"):
        export_model("gray", "tflite", tmp_path, overwrite=True)
    assert [p.name for p in tmp_path.iterdir()] == ["gray.tflite"]
    assert (tmp_path / "gray.tflite").read_bytes() == b"keep me"


def test_a_later_format_failing_keeps_the_earlier_checked_ones(model_dir, tmp_path, monkeypatch):
    """Formats are written one by one, each once checked: a TFLite failure after the
    SavedModel leaves the finished SavedModel (yielded before the error), nothing else."""
    from src_models.export import iter_export

    _off_by(monkeypatch, "tflite")
    done = []
    with pytest.raises(ExportError, match="the TFLite model differs"):
        for result in iter_export("gray", "saved_model,tflite", tmp_path):
            done.append(result)
    assert [r.format for r in done] == ["saved_model"] and done[0].max_error < TOLERANCE
    assert [p.name for p in tmp_path.iterdir()] == ["gray_saved_model"]
    assert (tmp_path / "gray_saved_model" / "saved_model.pb").is_file()


def test_an_export_within_the_tolerance_passes_and_reports_its_error(
    model_dir, tmp_path, monkeypatch
):
    _off_by(monkeypatch, "tflite", delta=5e-5)  # half the tolerance
    (result,) = export_model("gray", "tflite", tmp_path)
    assert result.max_error == pytest.approx(5e-5, abs=5e-6)  # the shift, within 1e-4
    assert [p.name for p in tmp_path.iterdir()] == ["gray.tflite"]


def test_test_image_is_a_noisy_sample_in_unit_range_clipped_at_zero():
    """napari-bfcnn never gives the network negative values: nor do the test tensors."""
    x = test_image(3, 600)
    assert x.shape == (1, 600, 600, 3) and x.dtype == np.float32
    assert x.min() == 0.0 and 0.9 < x.max() < 1.5
    assert 0.001 < np.mean(x == 0.0) < 0.3  # the noise of dark parts (astronaut's suit)
    np.testing.assert_array_equal(x, test_image(3, 600))


@pytest.mark.parametrize(
    ("setting", "words"),
    [
        ("100", "black level of 100"),
        ("auto", "0.5th percentile"),
        ("none", "no black level removed"),
        ("", "subtract a camera's black level"),
        ("legacy 95", "black level of 95"),  # a card from before the setting was recorded
    ],
)
def test_package_text_says_which_black_level_the_model_was_fine_tuned_with(setting, words):
    from types import SimpleNamespace

    from src_models.export import _black_level_advice

    if setting.startswith("legacy "):
        notes = {"mode": "clean", "black_level": setting.split()[1]}
    else:
        notes = {"black_level_setting": setting} if setting else {}
    card = SimpleNamespace(notes=notes)
    assert words in _black_level_advice(card)


def test_a_users_model_needs_its_authors_for_a_bioimageio_package(model_dir, tmp_path, capsys):
    from src_models.cli import main
    from src_models.export_bioimageio import PackageInfo

    with pytest.raises(ValueError, match="'pyramid' is your model"):
        export_model("pyramid", "bioimageio", tmp_path)
    assert main(["export", "pyramid", "--to", "bioimageio", "--out", str(tmp_path)]) == 2
    assert "--author NAME" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []  # refused before any work
    (result,) = export_model(
        "pyramid", "bioimageio", tmp_path, info=PackageInfo(authors=("A. Person",))
    )
    assert result.path.is_file()


def test_cli_export_writes_and_reports_each_format(model_dir, tmp_path, capsys):
    from src_models.cli import main

    assert main(["export", "pyramid", "--to", "tflite", "--out", str(tmp_path)]) == 0
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"tflite: {tmp_path / 'pyramid.tflite'} (max |export - keras| ")
    assert (tmp_path / "pyramid.tflite").stat().st_size > 1000
    assert main(["export", "pyramid", "--to", "onnx", "--out", str(tmp_path)]) == 2
    assert "unknown export format" in capsys.readouterr().err
    assert main(["export", "pyramid", "--to", "tflite", "--out", str(tmp_path)]) == 2  # exists
    assert "pyramid.tflite exist" in capsys.readouterr().err


def test_cli_export_reports_unwritable_or_existing_outputs_as_errors(model_dir, tmp_path, capsys):
    from src_models.cli import main

    taken = tmp_path / "a-file"
    taken.write_bytes(b"keep me")
    assert main(["export", "pyramid", "--to", "tflite", "--out", str(taken)]) == 2  # no traceback
    err = capsys.readouterr().err
    assert err.startswith("error: ") and str(taken) in err
    assert taken.read_bytes() == b"keep me"
    (tmp_path / "pyramid.tflite").write_bytes(b"keep me")
    assert main(["export", "pyramid", "--to", "tflite", "--out", str(tmp_path)]) == 2
    assert "pyramid.tflite exist(s); use overwrite (--overwrite)" in capsys.readouterr().err


def test_invalid_license_or_author_is_refused_before_any_work(model_dir, tmp_path):
    from src_models.export_bioimageio import PackageInfo

    with pytest.raises(ValueError, match="'GPL-9' is not an SPDX license id"):
        export_model("resnet", "tflite,bioimageio", tmp_path, info=PackageInfo(license="GPL-9"))
    with pytest.raises(ValueError, match="author 'a/b'"):
        export_model("resnet", "bioimageio", tmp_path, info=PackageInfo(authors=("a/b",)))
    assert list(tmp_path.iterdir()) == []
