"""Model registry: listing from cards, cached loading, clear errors, user-model management."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest

from src_models import registry
from src_models.inference import Denoiser
from src_models.modelfile import ModelFileError, read_card

TINY_NAMES = ["color", "gray", "pyramid", "resnet"]


@pytest.fixture
def no_bundled(tmp_path, monkeypatch) -> Path:
    """An empty bundled-model folder, so tests see only the tiny user models."""
    folder = tmp_path / "pretrained"
    folder.mkdir()
    monkeypatch.setattr(registry, "BUNDLED_DIR", folder)
    return folder


def test_user_model_dir_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(tmp_path))
    assert registry.user_model_dir() == tmp_path
    monkeypatch.delenv("NAPARI_BFCNN_MODEL_DIR")
    assert registry.user_model_dir().parts[-2:] == ("napari-bfcnn", "models")


def test_list_models_shows_saved_models_from_their_cards(user_models, no_bundled):
    models = registry.list_models()
    assert [m.name for m in models] == TINY_NAMES
    gray = next(m for m in models if m.name == "gray")
    assert (gray.channels, gray.kind, gray.builtin, gray.error) == (1, "dncnn", False, None)
    assert gray.receptive_field > 0 and gray.parameters > 0
    assert gray.path == user_models / "gray.keras"
    assert next(m for m in models if m.name == "color").channels == 3


def test_bundled_models_are_listed_first(user_models, no_bundled):
    shutil.copy(user_models / "resnet.keras", no_bundled / "zz_builtin.keras")
    models = registry.list_models()
    assert models[0].name == "zz_builtin" and models[0].builtin
    assert [m.name for m in models[1:]] == TINY_NAMES


def test_corrupt_files_are_listed_with_the_reason(user_models, no_bundled):
    (user_models / "broken.keras").write_bytes(b"not a zip file")
    info = next(m for m in registry.list_models() if m.name == "broken")
    assert "not a .keras model file" in info.error
    with pytest.raises(ModelFileError, match="broken.keras"):
        registry.load_model("broken")


def test_load_model_caches_until_the_file_changes(user_models, no_bundled):
    first = registry.load_model("gray")
    assert isinstance(first, Denoiser) and first.name == "gray" and first.channels == 1
    assert registry.load_model("gray") is first
    assert registry.load_model(user_models / "gray.keras") is first
    stat = (user_models / "gray.keras").stat()
    os.utime(user_models / "gray.keras", ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    assert registry.load_model("gray") is not first


def test_loaded_model_denoises_like_the_original(user_models, no_bundled, tiny_models):
    img = np.random.default_rng(0).uniform(0, 1, (24, 24)).astype("float32")
    loaded = registry.load_model("gray")
    np.testing.assert_allclose(loaded.denoise(img), tiny_models["gray"].denoise(img), rtol=1e-6)


def test_unknown_name_lists_the_available_models(user_models, no_bundled):
    with pytest.raises(ValueError, match="unknown model 'nope'; available models: color, gray"):
        registry.load_model("nope")


def test_missing_file_path_raises_naming_it(tmp_path):
    with pytest.raises(ModelFileError, match="model file not found: .*missing.keras"):
        registry.load_model(tmp_path / "missing.keras")


def test_rename_user_model_renames_file_and_card(user_models, no_bundled):
    new = registry.rename_user_model("gray", "gray_v2")
    assert new == user_models / "gray_v2.keras" and not (user_models / "gray.keras").exists()
    assert read_card(new).name == "gray_v2"
    assert "gray_v2" in [m.name for m in registry.list_models()]
    assert registry.load_model("gray_v2").channels == 1


def test_rename_refuses_bad_names_and_clashes(user_models, no_bundled):
    shutil.copy(user_models / "resnet.keras", no_bundled / "builtin.keras")
    with pytest.raises(ValueError, match="'builtin' is a bundled model"):
        registry.rename_user_model("builtin", "mine")
    with pytest.raises(ValueError, match="'builtin' is the name of a bundled model"):
        registry.rename_user_model("gray", "builtin")
    with pytest.raises(ValueError, match="a user model named 'color' already exists"):
        registry.rename_user_model("gray", "color")
    with pytest.raises(ValueError, match="'a b' is not a valid model name"):
        registry.rename_user_model("gray", "a b")
    with pytest.raises(ValueError, match="no user model named 'ghost'"):
        registry.rename_user_model("ghost", "x")


@pytest.mark.parametrize("name", ["..", ".", ".cells", "cells.keras", "a/b", "", "x" * 65])
def test_names_that_are_paths_hidden_files_or_file_names_are_refused(name, user_models, no_bundled):
    # ".." as a run folder would be the user-model folder itself, deleted by a fresh run
    from src_models.finetune import run_dir

    with pytest.raises(ValueError, match="not a valid model name"):
        registry.rename_user_model("gray", name)
    with pytest.raises(ValueError, match="not a valid model name"):
        run_dir(name)
    assert (user_models / "gray.keras").is_file()


def test_delete_user_model_removes_it_but_refuses_bundled(user_models, no_bundled):
    shutil.copy(user_models / "resnet.keras", no_bundled / "builtin.keras")
    registry.delete_user_model("pyramid")
    assert not (user_models / "pyramid.keras").exists()
    assert "pyramid" not in [m.name for m in registry.list_models()]
    with pytest.raises(ValueError, match="'builtin' is a bundled model"):
        registry.delete_user_model("builtin")
    assert (no_bundled / "builtin.keras").exists()


def test_user_model_shadowing_a_bundled_name_is_flagged(user_models, no_bundled):
    shutil.copy(user_models / "resnet.keras", no_bundled / "gray.keras")
    flagged = [m for m in registry.list_models() if m.name == "gray" and not m.builtin]
    assert "same name as a bundled model" in flagged[0].error
    registry.rename_user_model("gray", "my_gray")  # the user can still fix it
    assert (user_models / "my_gray.keras").exists()


def test_default_model_prefers_gray_and_color(user_models, no_bundled):
    assert registry.default_model(1, rgb=False) == "gray"
    assert registry.default_model(3, rgb=True) == "color"
    registry.delete_user_model("color")
    assert registry.default_model(3, rgb=True) == "gray"  # any model denoises colour per channel
    registry.delete_user_model("gray")
    assert registry.default_model(1, rgb=False) == "pyramid"  # first 1-channel model


def test_default_model_without_models_is_a_clear_error(tmp_path, monkeypatch, no_bundled):
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(tmp_path / "empty"))
    with pytest.raises(ValueError, match="no usable denoising model .* no models are installed"):
        registry.default_model(1, rgb=False)


def test_package_exports_the_api_without_importing_tensorflow():
    """``import src_models`` stays cheap: Keras loads only when a model is built or loaded."""
    import subprocess
    import sys

    import src_models

    code = (
        "import sys, src_models\n"
        "from src_models import Progress, Cancelled, ModelInfo, ModelCard, ConfigError\n"
        "assert 'tensorflow' not in sys.modules and 'keras' not in sys.modules\n"
    )
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root)}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    wanted = {"Denoiser", "Progress", "Cancelled", "list_models", "load_model", "default_model"}
    wanted |= {"ModelInfo", "estimate_sigma", "build_model", "ModelCard", "ModelFileError"}
    assert wanted | {"ConfigError"} == set(src_models.__all__)
    assert all(hasattr(src_models, name) for name in src_models.__all__)


def test_camera_data_get_the_microscopy_model_and_photos_the_gray_or_colour_one(user_models):
    from src_models import registry

    if not any(m.name == "microscopy" and m.builtin for m in registry.list_models()):
        pytest.skip("no bundled microscopy model")
    assert registry.is_camera_data("uint16") and registry.is_camera_data(np.int32)
    assert not registry.is_camera_data("uint8") and not registry.is_camera_data("float32")
    assert not registry.is_camera_data("uint16", rgb=True)
    assert registry.default_model(1, rgb=False, dtype="uint16") == "microscopy"
    assert registry.default_model(1, rgb=False, dtype="uint8") == "gray"
    assert registry.default_model(3, rgb=True, dtype="uint16") == "color"


@pytest.mark.usefixtures("bundled_only")
def test_camera_data_with_correlated_noise_default_to_the_model_trained_for_it():
    from types import SimpleNamespace

    import numpy as np

    correlated, white = SimpleNamespace(correlated=True), SimpleNamespace(correlated=False)
    assert registry.default_model(1, False, np.uint16, noise=correlated) == "microscopy-correlated"
    assert registry.default_model(1, False, np.uint16, noise=white) == "microscopy"
    assert registry.default_model(1, False, np.uint16) == "microscopy"
    assert registry.default_model(1, False, np.uint8, noise=correlated) == "gray"  # a photo


def _composite(size: int = 300, dtype=np.uint8) -> np.ndarray:
    """Three fluorophores as red, green and blue blobs on a nearly black ground."""
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[:size, :size]
    img = np.zeros((size, size, 3))
    for c in range(3):
        for _ in range(12):
            cy, cx = rng.uniform(0, size, 2)
            img[..., c] += np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / 60.0)
    img = 200 * img / img.max() + 4 + rng.poisson(2.0, img.shape)
    return img.astype(dtype)


@pytest.mark.parametrize("name", ["astronaut", "coffee", "chelsea"])
def test_photos_do_not_look_like_fluorescence_composites(name):
    from skimage import data

    assert not registry.looks_like_fluorescence_composite(getattr(data, name)())


def test_dark_rgb_composites_are_recognised_in_any_dtype_and_stack():
    comp = _composite()
    assert registry.looks_like_fluorescence_composite(comp)
    assert registry.looks_like_fluorescence_composite(comp.astype(np.float32) / 255 + 0.3)
    assert registry.looks_like_fluorescence_composite(np.stack([comp, comp]))  # first plane
    assert not registry.looks_like_fluorescence_composite(np.zeros((32, 32, 3), np.uint16))
    assert not registry.looks_like_fluorescence_composite(comp[..., :2])  # not RGB
    nan = comp.astype(np.float32)
    nan[:10] = np.nan
    assert registry.looks_like_fluorescence_composite(nan)


def test_composite_check_reads_only_a_small_view_of_a_lazy_stack():
    class Lazy:
        shape = (50, 4096, 4096, 3)
        ndim = 4

        def __getitem__(self, index):
            self.index = index
            return _composite(256)

    lazy = Lazy()
    assert registry.looks_like_fluorescence_composite(lazy)
    assert lazy.index[:2] == (0, slice(None, None, 16))


def test_threads_loading_a_model_at_once_share_one_copy(user_models, no_bundled, monkeypatch):
    # dask's threaded scheduler asks for the model from every thread at the same moment
    import threading
    import time

    from src_models import modelfile

    loads = []

    original = modelfile.load_keras_model

    def slow_load(path, *args, **kwargs):
        loads.append(path)
        time.sleep(0.2)  # a load takes a while: the other threads arrive meanwhile
        return original(path, *args, **kwargs)

    monkeypatch.setattr(modelfile, "load_keras_model", slow_load)
    registry.clear_cache()
    got = []
    threads = [threading.Thread(target=lambda: got.append(registry.load_model("gray")))
               for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(loads) == 1 and len(got) == 4 and all(d is got[0] for d in got)


@pytest.mark.parametrize(
    ("notes", "offset"),
    [
        ({"black_level_setting": "auto"}, "auto"),
        ({"black_level_setting": "12.5"}, 12.5),
        ({"black_level_setting": "none"}, None),
        ({"black_level_setting": "camera"}, "camera"),
        # cards of models fine-tuned before the setting was recorded: their text
        ({"black_level": "estimated per plane (auto)"}, "auto"),
        ({"black_level": "none (the plane's minimum when negative)"}, None),
        ({"black_level": "95"}, 95.0),
        ({"black_level": "estimated per plane for camera data (12/16-bit, not RGB), else none"},
         "camera"),
        ({}, "camera"),  # a bundled model
        ({"mode": "clean"}, None),  # fine-tuned before any black level was removed or recorded
    ],
)
def test_the_black_level_a_model_was_fine_tuned_with_is_read_from_old_and_new_cards(
    user_models, no_bundled, notes, offset
):
    from src_models.modelfile import copy_with_card

    src = user_models / "gray.keras"
    card = read_card(src)
    copy_with_card(src, src, card.model_copy(update={"notes": notes}))
    registry.clear_cache()
    assert registry.finetuned_black_level("gray") == offset
    info = next(m for m in registry.list_models() if m.name == "gray")
    assert registry.finetuned_black_level(info) == offset
    # what denoising uses by default: the model's own, else by data
    by_data_u16 = "auto" if offset == "camera" else offset
    by_data_u8 = None if offset == "camera" else offset
    assert registry.default_offset("gray", np.dtype(np.uint16), False) == by_data_u16
    assert registry.default_offset("gray", np.dtype(np.uint8), False) == by_data_u8
