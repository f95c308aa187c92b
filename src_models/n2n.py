"""Neighbor2Neighbor: train a denoiser from noisy images alone (Huang et al., CVPR 2021).

Why this method for user data: it needs no clean image and no noise model, only
noise that is independent from pixel to pixel with zero mean (Gaussian, Poisson,
Poisson-Gaussian camera noise all qualify), and it trains the unchanged bias-free
network with a plain supervised step, so the result stays positively homogeneous.

How: every 2x2 cell of a noisy image ``y`` gives two *neighbouring* pixels, chosen
at random per cell; they form two half-resolution images ``g1`` and ``g2`` whose
noise is independent while their signals nearly agree. The loss of the paper is::

    ||D(g1) - g2||^2 + gamma * ||D(g1) - g2 - (g1(D(y)) - g2(D(y)))||^2

with ``D(y)`` computed without gradient, ``g1(.)``/``g2(.)`` the same sub-sampling
applied to the denoised full image; the regulariser corrects for the small shift
between the two neighbours (without it, results are smoother). Because ``D(y)``
is a constant, the loss equals, up to a constant and the factor ``1 + gamma``,
``||D(g1) - t||^2`` with the target::

    t = g2 + gamma / (1 + gamma) * (g1(D(y)) - g2(D(y)))

so :class:`Neighbor2NeighborSampler` computes ``D(y)`` with the current model and
hands ``(g1, t)`` to the ordinary training step: the *full* method, not the
``gamma = 0`` shortcut, with no custom gradient code. As in the authors' code,
``gamma`` ramps linearly from 0 to its final value over the run.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .config import CorruptionConfig
from .corruptions import check_seed
from .data import PatchSampler

__all__ = ["Neighbor2NeighborSampler", "neighbor_pair", "neighbor_indices", "take_cells"]

# positions in a 2x2 cell: 0 = (0, 0), 1 = (0, 1), 2 = (1, 0), 3 = (1, 1);
# ordered pairs of horizontally or vertically adjacent positions
_PAIRS = np.array([(0, 1), (1, 0), (0, 2), (2, 0), (1, 3), (3, 1), (2, 3), (3, 2)], dtype=np.intp)
_N2N_STREAM = 4


def neighbor_indices(shape: tuple[int, int, int], rng: np.random.Generator) -> np.ndarray:
    """Random neighbour choices: int array (2, B, h, w), cell positions of g1 and g2 in 0..3.

    Parameters
    ----------
    shape : (B, h, w)
        Batch size and the half-resolution size.
    rng : numpy.random.Generator
    """
    k = rng.integers(0, len(_PAIRS), size=shape)
    return np.moveaxis(_PAIRS[k], -1, 0)


def take_cells(images: np.ndarray, index: np.ndarray) -> np.ndarray:
    """One pixel per 2x2 cell: (B, 2h, 2w, C) images and (B, h, w) positions -> (B, h, w, C).

    The same position is taken in every channel. Odd trailing rows or columns are dropped.
    """
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must have shape (B, H, W, C), got shape {images.shape}")
    b, h2, w2, c = images.shape
    h, w = h2 // 2, w2 // 2
    if index.shape != (b, h, w):
        raise ValueError(f"index has shape {index.shape}; expected {(b, h, w)}")
    cells = images[:, : 2 * h, : 2 * w].reshape(b, h, 2, w, 2, c)
    cells = cells.transpose(0, 1, 3, 2, 4, 5).reshape(b, h, w, 4, c)
    return np.take_along_axis(cells, index[..., None, None], axis=3)[:, :, :, 0]


def neighbor_pair(
    images: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split noisy images into the two neighbour sub-images.

    Parameters
    ----------
    images : ndarray
        (B, H, W, C) noisy images (H, W even; an odd last row / column is dropped).
    rng : numpy.random.Generator

    Returns
    -------
    g1, g2 : ndarray
        float32 (B, H/2, W/2, C).
    index : ndarray
        (2, B, H/2, W/2) cell positions, to sub-sample other images (D(y)) the same way.
    """
    images = np.asarray(images, dtype=np.float32)
    b, h2, w2, _ = images.shape
    index = neighbor_indices((b, h2 // 2, w2 // 2), rng)
    return take_cells(images, index[0]), take_cells(images, index[1]), index


class Neighbor2NeighborSampler:
    """Self-supervised batches ``(g1, target)`` from noisy images, fixed by (seed, step, model).

    Parameters
    ----------
    images : list of ndarray
        float (H, W, C) *noisy* images, normalised like the clean ones of other modes.
    patch_size : int
        Side of the network's input patches (``g1``); crops of ``2 * patch_size`` are cut.
    batch_size : int
    seed : int
    augment : bool
        Random flips and 90-degree rotations of the crops.
    gamma : float
        Final weight of the regulariser (the paper uses 2; 0 switches it off).
    total_steps : int
        Steps of the run; ``gamma`` ramps linearly up to its final value over them.
    """

    def __init__(
        self,
        images: list[np.ndarray],
        patch_size: int,
        batch_size: int,
        seed: int = 0,
        augment: bool = True,
        gamma: float = 2.0,
        total_steps: int = 1,
    ) -> None:
        if gamma < 0 or not np.isfinite(gamma):
            raise ValueError(f"gamma must be >= 0 (got {gamma})")
        if total_steps < 1:
            raise ValueError(f"total_steps must be >= 1 (got {total_steps})")
        self.seed = check_seed(seed)
        self.gamma = float(gamma)
        self.total_steps = int(total_steps)
        self.patch_size = int(patch_size)
        self._crops = PatchSampler(
            images, 2 * int(patch_size), batch_size, CorruptionConfig(), seed=seed, augment=augment
        )
        self._model: Any = None

    def bind(self, model: Any) -> None:
        """The model being trained (its no-gradient output feeds the regulariser)."""
        self._model = model

    def gamma_at(self, step: int) -> float:
        """The regulariser weight at ``step`` (linear ramp from 0)."""
        return self.gamma * min(1.0, step / self.total_steps)

    def batch(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        """Batch ``step``: input ``g1`` and target ``t`` (see the module docstring), float32."""
        y = self._crops.clean_patches(step)
        rng = np.random.default_rng([self.seed, step, _N2N_STREAM])
        g1, g2, index = neighbor_pair(y, rng)
        gamma = self.gamma_at(step)
        if gamma == 0.0 or self._model is None:
            return g1, g2
        dy = np.asarray(self._model.predict_on_batch(y), dtype=np.float32)
        shift = take_cells(dy, index[0]) - take_cells(dy, index[1])
        return g1, g2 + np.float32(gamma / (1.0 + gamma)) * shift

    def __call__(self, step: int) -> tuple[np.ndarray, np.ndarray]:
        return self.batch(step)
