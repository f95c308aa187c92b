"""Engine fixtures: tiny random models in memory and saved as a user-model folder."""

from __future__ import annotations

import os
import shutil

import pytest
from model_factory import TINY_CONFIGS, tiny_model

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")


@pytest.fixture(scope="session")
def tiny_models():
    """name -> Denoiser for each entry of TINY_CONFIGS (in memory, not saved)."""
    from src_models.inference import Denoiser

    out = {}
    for i, (name, (kind, kwargs)) in enumerate(TINY_CONFIGS.items()):
        model, card = tiny_model(kind, seed=i, name=name, **kwargs)
        out[name] = Denoiser(model, card)
    return out


@pytest.fixture(scope="session")
def tiny_model_folder(tiny_models, tmp_path_factory):
    """The tiny models saved once as ``<name>.keras``."""
    from src_models.modelfile import save_model

    folder = tmp_path_factory.mktemp("models")
    for name, den in tiny_models.items():
        save_model(den.model, folder / f"{name}.keras", den.card)
    return folder


@pytest.fixture
def model_dir(tiny_model_folder, monkeypatch):
    """NAPARI_BFCNN_MODEL_DIR at the tiny models, for this test only.

    Why per test: tiny models named like bundled ones (``gray``, ``color``) shadow them,
    so a session-wide setting made other tests' results depend on the order they ran in.
    """
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(tiny_model_folder))
    return tiny_model_folder


@pytest.fixture
def user_models(model_dir, tmp_path, monkeypatch):
    """A fresh writable copy of the tiny model folder, for tests that rename or delete models."""
    from src_models import registry

    folder = tmp_path / "user_models"
    shutil.copytree(model_dir, folder)
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(folder))
    registry.clear_cache()
    yield folder
    registry.clear_cache()


@pytest.fixture
def bundled_only(tmp_path, monkeypatch):
    """An empty user-model folder: base names resolve to the bundled models."""
    from src_models import registry

    folder = tmp_path / "models"
    folder.mkdir()
    monkeypatch.setenv("NAPARI_BFCNN_MODEL_DIR", str(folder))
    registry.clear_cache()
    yield folder
    registry.clear_cache()
