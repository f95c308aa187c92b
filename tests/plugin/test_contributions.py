"""The npe2 manifest, the sample data and the plain function contribution."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load(python_name: str):
    module, _, attr = python_name.partition(":")
    return getattr(importlib.import_module(module), attr)


def test_manifest_validates_and_every_command_imports():
    from npe2 import PluginManifest

    manifest = PluginManifest.from_file(ROOT / "napari.yaml")
    assert manifest.name == "napari-bfcnn"
    assert manifest.display_name == "BF-CNN denoising"
    commands = manifest.contributions.commands
    assert {c.id for c in commands} >= {
        "napari-bfcnn.make_denoise_widget",
        "napari-bfcnn.denoise_image",
    }
    for command in commands:
        assert callable(_load(command.python_name)), command.python_name
    keys = {s.key for s in manifest.contributions.sample_data}
    assert keys == {"camera", "astronaut", "cell", "zstack"}
    widgets = {w.display_name: w for w in manifest.contributions.widgets}
    assert widgets["Denoise image (function)"].autogenerate


def test_packaged_manifest_is_the_root_manifest():
    packaged = ROOT / "napari_bfcnn" / "napari.yaml"
    assert packaged.read_text() == (ROOT / "napari.yaml").read_text()


def test_installed_plugin_is_found_by_npe2():
    from npe2 import PluginManager

    pm = PluginManager.instance()
    pm.discover()
    if "napari-bfcnn" not in pm:
        pytest.skip("napari-bfcnn is not installed (pip install -e .)")
    assert pm.get_manifest("napari-bfcnn").display_name == "BF-CNN denoising"


@pytest.mark.parametrize(
    ("name", "shape", "dtype", "rgb"),
    [
        ("camera_sample", (512, 512), np.float32, False),
        ("astronaut_sample", (512, 512, 3), np.float32, True),
        ("cell_sample", (660, 550), np.uint16, False),
        ("zstack_sample", (8, 160, 192), np.float32, False),
    ],
)
def test_samples_come_with_their_clean_reference(name, shape, dtype, rgb):
    import napari_bfcnn

    layers = getattr(napari_bfcnn, name)()
    (clean, clean_kw, clean_type), (noisy, noisy_kw, noisy_type) = layers
    assert clean_type == noisy_type == "image"
    assert clean_kw["name"].endswith("(clean reference)") and not clean_kw["visible"]
    assert noisy_kw["name"].endswith("(noisy)")
    assert noisy.shape == clean.shape == shape
    assert noisy.dtype == dtype
    assert noisy_kw.get("rgb", False) == rgb
    residual = noisy.astype(np.float64) - clean
    assert 5 < residual.std() < 60  # clearly noisy, not garbage
    again = getattr(napari_bfcnn, name)()[1][0]
    np.testing.assert_array_equal(noisy, again)  # fixed seed


def test_gaussian_samples_have_the_stated_sigma():
    from napari_bfcnn import camera_sample

    (clean, _, _), (noisy, _, _) = camera_sample()
    assert (noisy - clean).std() == pytest.approx(25, rel=0.02)


@pytest.fixture
def plugin(npe2pm):
    """This repository's manifest registered with napari's test plugin manager."""
    with npe2pm.tmp_plugin(manifest=str(ROOT / "napari.yaml")) as plugin:
        yield plugin


@pytest.mark.gui
def test_sample_opens_through_napari(make_napari_viewer, plugin):
    viewer = make_napari_viewer()
    viewer.open_sample("napari-bfcnn", "zstack")
    names = [lyr.name for lyr in viewer.layers]
    assert names == ["coins z-stack (clean reference)", "coins z-stack (noisy)"]
    np.testing.assert_allclose(viewer.layers[1].scale, (3, 1, 1))


def test_function_contribution_denoises_a_plain_array():
    from napari_bfcnn import denoise_image
    from src_models import load_model

    data = np.random.default_rng(0).uniform(0, 255, (3, 40, 40)).astype(np.float32)
    out = denoise_image(data, model="tiny-gray")
    np.testing.assert_allclose(out, load_model("tiny-gray").denoise(data), rtol=1e-5, atol=1e-4)
    rgb = np.random.default_rng(1).integers(0, 255, (40, 40, 3), dtype=np.uint8)
    out_rgb = denoise_image(rgb, model="tiny-color")
    np.testing.assert_array_equal(out_rgb, load_model("tiny-color").denoise(rgb, channel_axis=-1))


def test_function_contribution_takes_rgb_stacks_and_camera_data_as_the_command_line_does():
    from napari_bfcnn import denoise_image
    from src_models import load_model

    rng = np.random.default_rng(4)
    movie = rng.integers(0, 255, (2, 40, 36, 3), dtype=np.uint8)  # T, Y, X, RGB
    out = denoise_image(movie, model="tiny-color")
    np.testing.assert_array_equal(out, load_model("tiny-color").denoise(movie, channel_axis=-1))
    camera = (100 + rng.poisson(50.0, (40, 36))).astype(np.uint16)  # a black level of 100
    out = denoise_image(camera, model="tiny-gray")
    np.testing.assert_array_equal(out, load_model("tiny-gray").denoise(camera, offset="auto"))
    with pytest.raises(ValueError, match="multiscale"):
        denoise_image([camera, camera[::2, ::2]], model="tiny-gray")
    two = (100 + rng.poisson(50.0, (40, 36, 2))).astype(np.uint16)  # Y, X, 2 channels
    out = denoise_image(two, model="tiny-gray")  # channels guessed as the Denoise widget does
    want = load_model("tiny-gray").denoise(two, channel_axis=-1, offset="auto")
    np.testing.assert_array_equal(out, want)


def test_function_contribution_tta_averages_eight_flips():
    from napari_bfcnn import denoise_image
    from src_models import load_model

    data = np.random.default_rng(3).uniform(0, 255, (40, 40)).astype(np.float32)
    out = denoise_image(data, model="tiny-gray", tta=True)
    den = load_model("tiny-gray")
    np.testing.assert_allclose(out, den.denoise(data, tta=8), rtol=1e-5, atol=1e-4)
    assert np.abs(out - den.denoise(data)).max() > 1e-3


def test_function_contribution_strength_blends_input_and_output():
    from napari_bfcnn import denoise_image
    from src_models import load_model

    data = np.random.default_rng(4).uniform(0, 255, (40, 40)).astype(np.float32)
    out = denoise_image(data, model="tiny-gray", strength=0.25)
    np.testing.assert_allclose(
        out, load_model("tiny-gray").denoise(data, strength=0.25), rtol=1e-5, atol=1e-4
    )
    with pytest.raises(ValueError, match="strength must be a number from 0"):
        denoise_image(data, model="tiny-gray", strength=1.5)


def test_function_contribution_auto_model_and_errors():
    from napari_bfcnn import denoise_image
    from src_models import default_model, load_model

    rng = np.random.default_rng(2)
    data = rng.uniform(0, 1, (24, 24)).astype(np.float32)
    # "auto" on float gray data: the bundled gray model, no black level removed
    name = default_model(1, rgb=False, dtype=data.dtype)
    assert name == "gray"
    want = load_model(name).denoise(data)
    np.testing.assert_allclose(denoise_image(data), want, rtol=1e-5, atol=1e-5)
    assert np.abs(want - data).max() > 1e-3  # the model changed the image
    # "auto" on 16-bit camera data: the microscopy model with the black level ("auto") removed
    camera = (100 + rng.poisson(50.0, (40, 36))).astype(np.uint16)
    name = default_model(1, rgb=False, dtype=camera.dtype)
    assert name == "microscopy"
    out = denoise_image(camera)
    np.testing.assert_array_equal(out, load_model(name).denoise(camera, offset="auto"))
    assert not np.array_equal(out, load_model(name).denoise(camera))  # the offset mattered
    with pytest.raises(ValueError, match="boolean"):
        denoise_image(np.zeros((16, 16), bool))
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        denoise_image(data, model="nope")


@pytest.mark.gui
def test_widget_opened_through_the_plugin_menu_denoises(make_napari_viewer, qtbot, plugin):
    """napari hands plugins a public-only proxy of the viewer; the widget must work with it."""
    from src_models import load_model

    viewer = make_napari_viewer()
    data = np.random.default_rng(5).uniform(0, 200, (3, 32, 32)).astype(np.float32)
    a = viewer.add_image(data.copy(), name="a")
    _, widget = viewer.window.add_plugin_dock_widget("napari-bfcnn", "Denoise")
    assert widget.image.value.name == "a"
    assert widget.chosen_channel_axis == 0
    widget.channel_axis.value = "none"
    viewer.add_image(np.zeros((32, 32), np.float32), name="b")
    widget.image.value = widget.image.choices[0]
    assert widget.image.value.name == "a"
    assert widget.chosen_channel_axis is None  # remembered across the proxy
    widget.model.value = "tiny-gray"
    assert widget.run() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=60_000)
    out = viewer.layers["a [denoised: tiny-gray]"].data
    # no channel axis: each of the 3 planes on its own, float data keep their zero
    want = load_model("tiny-gray").denoise(data, channel_axis=None, offset=None)
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-4)
    assert np.abs(out - data).max() > 1e-2  # the model ran
    np.testing.assert_array_equal(a.data, data)  # the input layer is left as it was


@pytest.mark.gui
def test_function_widget_is_autogenerated_and_adds_a_layer(make_napari_viewer, plugin):
    from src_models import load_model

    viewer = make_napari_viewer()
    data = np.random.default_rng(3).uniform(0, 1, (24, 24)).astype(np.float32)
    viewer.add_image(data)
    _, widget = viewer.window.add_plugin_dock_widget("napari-bfcnn", "Denoise image (function)")
    assert widget.model.widget_type == "ComboBox"  # the installed models, not free text
    assert widget.model.value == "auto" and "tiny-gray" in widget.model.choices
    widget.model.value = "tiny-gray"
    widget.tile.value = 1024  # magicgui's default limit of 999 would refuse a 1024-px tile
    assert widget.tile.value == 1024
    widget.tile.value = 0
    widget()
    assert len(viewer.layers) == 2
    want = load_model("tiny-gray").denoise(data)
    np.testing.assert_allclose(viewer.layers[-1].data, want, rtol=1e-5, atol=1e-5)


def test_function_widget_model_menu_follows_models_saved_renamed_and_deleted(
    make_napari_viewer, plugin, model_dir, tmp_path, monkeypatch
):
    import shutil

    from napari_bfcnn._model_events import notify_models_changed

    folder = tmp_path / "models"
    shutil.copytree(model_dir, folder)
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(folder))
    viewer = make_napari_viewer()
    _, widget = viewer.window.add_plugin_dock_widget("napari-bfcnn", "Denoise image (function)")
    assert "fresh" not in widget.model.choices
    shutil.copy(folder / "tiny-gray.keras", folder / "fresh.keras")  # as the Fine-tune widget saves
    notify_models_changed()  # no layer event: napari alone would not refresh the combo
    assert "fresh" in widget.model.choices
    (folder / "fresh.keras").unlink()
    notify_models_changed()
    assert "fresh" not in widget.model.choices


@pytest.fixture
def run_main(make_napari_viewer, plugin, monkeypatch):
    """``python -m napari_bfcnn ARGS`` in the test's viewer; returns it once napari.run was called.

    Why patched: ``main`` makes its own ``napari.Viewer`` and blocks in ``napari.run``; the
    test hands it a viewer that is closed after the test and records the run instead.
    """
    import napari

    from napari_bfcnn.__main__ import main

    made, ran = [], []

    def viewer(**kwargs):
        made.append(make_napari_viewer(**kwargs))
        return made[-1]

    monkeypatch.setattr(napari, "Viewer", viewer)
    monkeypatch.setattr(napari, "run", lambda *a, **k: ran.append(len(made)))

    def run(*argv: str):
        main(list(argv))
        assert len(made) == 1 and ran == [1]  # one viewer, then the event loop
        return made[0]

    return run


def _docked_denoise(viewer):
    from napari_bfcnn import DenoiseWidget

    docked = [w for w in viewer.window.dock_widgets.values() if isinstance(w, DenoiseWidget)]
    assert len(docked) == 1
    return docked[0]


@pytest.mark.gui
def test_python_m_opens_the_camera_sample_with_the_denoise_widget_ready(run_main):
    """The README quick start: the noisy camera on top, the Denoise dock picking it."""
    from napari_bfcnn import camera_sample

    viewer = run_main()
    assert viewer.title == "napari-bfcnn"
    assert [lyr.name for lyr in viewer.layers] == [
        "camera (clean reference)",
        "camera (noisy)",
    ]
    np.testing.assert_array_equal(viewer.layers["camera (noisy)"].data, camera_sample()[1][0])
    assert not viewer.layers["camera (clean reference)"].visible
    widget = _docked_denoise(viewer)
    assert widget.image.value is viewer.layers["camera (noisy)"]  # one click (Run) away
    assert widget.model.value == "auto"


@pytest.mark.gui
def test_python_m_takes_another_sample(run_main):
    viewer = run_main("--sample", "cell")
    assert [lyr.name for lyr in viewer.layers] == ["cell (clean reference)", "cell (noisy)"]
    assert viewer.layers["cell (noisy)"].data.dtype == np.uint16
    assert _docked_denoise(viewer).image.value is viewer.layers["cell (noisy)"]


@pytest.mark.gui
def test_python_m_with_no_sample_opens_an_empty_viewer(run_main):
    viewer = run_main("--no-sample")
    assert len(viewer.layers) == 0
    assert _docked_denoise(viewer).image.value is None


@pytest.mark.gui
def test_python_m_opens_the_files_given_instead_of_a_sample(run_main, npe2pm, tmp_path):
    data = np.random.default_rng(7).uniform(0, 255, (30, 20)).astype(np.float32)
    path = tmp_path / "mine.npy"
    np.save(path, data)
    with npe2pm.tmp_plugin(package="napari"):  # napari's own readers, as in a user's napari
        viewer = run_main(str(path))
    assert [lyr.name for lyr in viewer.layers] == ["mine"]
    np.testing.assert_array_equal(viewer.layers["mine"].data, data)
    assert _docked_denoise(viewer).image.value is viewer.layers["mine"]


def test_python_m_refuses_an_unknown_sample(capsys):
    from napari_bfcnn.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--sample", "nope"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err
