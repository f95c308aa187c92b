"""The BF-DnCNN of the bias-free CNN paper (Mohan et al., ICLR 2020) as a :class:`Denoiser`.

Why here: the benchmark measures our models side by side with the paper's own
weights, in the same run and on the same noisy inputs. The weights are read from
the numpy files of the anchor folder (``../shared/anchors/bf_dncnn_paper``) and
are never copied into the package: this model is a yardstick, not a bundled model.

The paper's network is exactly our ``DnCNNConfig(depth=20, width=64, norm=True)``:
its inference-time batch norm (weight / (sqrt(running_var) + 1e-5), no mean, no
bias) is a ScaleNorm with ``gamma = scale`` and ``moving_std = 1``.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from .inference import Denoiser

__all__ = ["DEPTH", "WIDTH", "REFERENCE_FILES", "load_reference", "reference_files"]

DEPTH = 20
WIDTH = 64
REFERENCE_FILES = ("bf_dncnn_0_55.npz", "bf_dncnn_0_100.npz")
_RANGE = re.compile(r"_(\d+)_(\d+)$")


def reference_files(folder: str | Path) -> list[Path]:
    """The paper's weight files present in an anchor folder, [0,55] first.

    Parameters
    ----------
    folder : str or Path
        The ``bf_dncnn_paper`` anchor folder.

    Returns
    -------
    list of Path
        Existing files among :data:`REFERENCE_FILES` (empty if the folder is missing).
    """
    folder = Path(folder)
    return [folder / f for f in REFERENCE_FILES if (folder / f).is_file()]


def _sigma_range(path: Path) -> tuple[float, float]:
    m = _RANGE.search(path.stem)
    if not m:
        raise ValueError(
            f"cannot read the training sigma range from {path.name!r}: expected a name like "
            "'bf_dncnn_0_55.npz'"
        )
    return float(m.group(1)), float(m.group(2))


def _read_weights(path: Path) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """Kernels conv_00..conv_19 and scales scale_01..scale_18, checked against the architecture."""
    with np.load(path) as f:
        keys = set(f.files)
        want_convs = [f"conv_{i:02d}" for i in range(DEPTH)]
        want_scales = [f"scale_{i:02d}" for i in range(1, DEPTH - 1)]
        missing = [k for k in want_convs + want_scales if k not in keys]
        if missing:
            raise ValueError(f"{path} is not a BF-DnCNN weight file: missing arrays {missing[:4]}")
        convs = [np.asarray(f[k], dtype=np.float32) for k in want_convs]
        scales = [np.asarray(f[k], dtype=np.float32) for k in want_scales]
    shapes = [(3, 3, 1, WIDTH)] + [(3, 3, WIDTH, WIDTH)] * (DEPTH - 2) + [(3, 3, WIDTH, 1)]
    for i, (k, shape) in enumerate(zip(convs, shapes, strict=True)):
        if k.shape != shape:
            raise ValueError(f"{path}: conv_{i:02d} has shape {k.shape}, expected {shape}")
    for i, s in enumerate(scales, start=1):
        if s.shape != (WIDTH,):
            raise ValueError(f"{path}: scale_{i:02d} has shape {s.shape}, expected ({WIDTH},)")
    return convs, scales


def load_reference(path: str | Path) -> Denoiser:
    """Build the paper's BF-DnCNN from one of its ``.npz`` weight files.

    Parameters
    ----------
    path : str or Path
        ``bf_dncnn_0_55.npz`` or ``bf_dncnn_0_100.npz`` from the anchor folder.

    Returns
    -------
    Denoiser
        Named ``"BF-DnCNN (paper, [0,55])"`` (or ``[0,100]``); its card's receptive
        field is measured and its notes say it is not a shipped model.
    """
    import keras

    from .architectures import build_model, parameter_count, receptive_field
    from .config import DnCNNConfig, ModelCard

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference weights not found: {path}")
    lo, hi = _sigma_range(path)
    convs, scales = _read_weights(path)
    config = DnCNNConfig(channels=1, depth=DEPTH, width=WIDTH, norm=True)
    model = build_model(config, name=f"bf_dncnn_paper_{lo:g}_{hi:g}")
    conv_layers = [layer for layer in model.layers if isinstance(layer, keras.layers.Conv2D)]
    norm_layers = [layer for layer in model.layers if type(layer).__name__ == "ScaleNorm"]
    if len(conv_layers) != DEPTH or len(norm_layers) != DEPTH - 2:  # pragma: no cover
        raise RuntimeError(
            f"build_model gave {len(conv_layers)} convolutions and {len(norm_layers)} norms; "
            f"expected {DEPTH} and {DEPTH - 2}"
        )
    for layer, kernel in zip(conv_layers, convs, strict=True):
        layer.kernel.assign(kernel)
    for layer, scale in zip(norm_layers, scales, strict=True):
        layer.gamma.assign(scale)
        layer.moving_std.assign(np.ones_like(scale))
    name = f"BF-DnCNN (paper, [{lo:g},{hi:g}])"
    card = ModelCard(
        name=name,
        description=(
            f"Bias-free DnCNN of Mohan et al. (ICLR 2020), trained on sigma in [{lo:g}, {hi:g}] "
            "(8-bit) on the 400 BSD training crops; the authors' weights."
        ),
        channels=1,
        kind="dncnn",
        parameters=parameter_count(model),
        receptive_field=receptive_field(model, 1),
        size_multiple=1,
        sigma_range=(lo, hi),
        training_data=["train/gray400 (Train400), as in the paper"],
        notes={
            "source": "github.com/LabForComputationalVision/bias_free_denoising (MIT licence)",
            "weights": str(path),
            "shipped": "no: a benchmark reference only, NOT shipped with napari-bfcnn",
        },
    )
    return Denoiser(model, card, name=name)
