"""A plain image -> image function for napari-workflows and napari-assistant.

Why a separate entry point: workflow tools call functions with arrays, not
widgets; this one runs synchronously and raises on bad input (a function's
caller decides how to show errors).
"""

# no ``from __future__ import annotations``: magicgui must see the real ImageData type

import contextlib
import weakref
from typing import Annotated

import numpy as np
from napari.types import ImageData

from ._layers import LayerError, guess_channel_axis, read_array
from ._planes import run_to_end
from ._workers import AUTO, DenoiseJob, denoise_job

__all__ = ["denoise_image"]


_FOLLOWING: "weakref.WeakSet[object]" = weakref.WeakSet()  # combos refreshed on model events


def _model_menu(widget=None) -> list[tuple[str, str]]:
    """Installed models for the generated widget's combo, "auto" first, as the docks list them.

    Why the hook: napari refreshes a generated widget's choices on layer events only;
    the combo must also follow models trained, renamed or deleted in the Fine-tune widget.
    """
    from ._model_choices import model_choices

    if widget is not None and widget not in _FOLLOWING:
        _FOLLOWING.add(widget)
        _follow_model_events(widget)
    return model_choices()[1]


def _follow_model_events(widget) -> None:
    from ._model_events import model_events

    ref = weakref.ref(widget)

    def refresh() -> None:
        combo = ref()
        if combo is not None:
            with contextlib.suppress(RuntimeError):  # its Qt widget was deleted
                combo.reset_choices()

    model_events.changed.connect(refresh)


def denoise_image(
    image: ImageData,
    model: Annotated[str, {"choices": _model_menu}] = AUTO,
    tile: Annotated[int, {"min": 0, "max": 8192, "step": 64}] = 0,
    tta: bool = False,
    strength: Annotated[float, {"min": 0.0, "max": 1.0, "step": 0.05}] = 1.0,
) -> ImageData:
    """Denoise an image or stack with a bias-free CNN.

    Defaults follow the data as on the command line: camera data (12/16-bit
    integers, not RGB) get the microscopy model (the one for correlated noise
    where a centre crop shows it) and their black level removed per plane.

    Parameters
    ----------
    image : array-like
        2-D gray, (..., Y, X, 3|4) RGB(A) (a last axis of 3 or 4 is taken as
        colour: no image is 3 or 4 pixels wide), or a stack whose last two axes
        are Y, X. Channels are guessed as the Denoise widget guesses them: a last
        axis of 2, or a first axis of at most 4 in front of a larger plane, holds
        channels, each denoised alone by a gray model (the Denoise dock lets you
        override the guess). Multiscale (pyramid) data are refused: pass one level.
    model : str
        Model name or ``.keras`` path; ``"auto"`` picks by data: colour for RGB,
        microscopy for camera data, else gray.
    tile : int
        Tile size in pixels; 0 chooses automatically.
    tta : bool
        Test-time augmentation: average the model over the 8 flips and transposes
        of the image (in the benchmark about +0.1 to +0.25 dB at σ 15-50, up to
        +0.7 dB at σ 1-5; 8 times slower).
    strength : float
        From 0 to 1: ``image + strength * (denoised - image)``; 1 is the model's
        output, less keeps part of the noise and fine grain.

    Returns
    -------
    np.ndarray
        Same shape; same dtype for integers, float32 for floats.

    Raises
    ------
    ValueError
        The image or model cannot be used; the message says why.
    """
    from src_models.denoise_cmd import BY_DATA, plan_for_data

    if image is None:
        return None
    if isinstance(image, (list, tuple)) or type(image).__name__ == "MultiScaleData":
        raise ValueError(
            "multiscale (pyramid) data cannot be denoised as one image: pass one level, "
            "e.g. the full-resolution layer.data[0]"
        )
    data = image if hasattr(image, "shape") and hasattr(image, "dtype") else np.asarray(image)
    rgb = len(data.shape) >= 3 and data.shape[-1] in (3, 4)
    axis = None if rgb else guess_channel_axis(data.shape)  # as the Denoise widget guesses
    try:
        inp = read_array(data, name="image", rgb=rgb, channel_axis=axis)
        _, name, _, offset = plan_for_data(
            data, inp.channel_axis, None if model in (None, "", AUTO) else model, BY_DATA
        )
    except LayerError as err:
        raise ValueError(str(err)) from None
    job = DenoiseJob(
        inp=inp,
        model=name,
        tile=tile or None,
        offset=offset,
        tta=8 if tta else 1,
        strength=float(strength),
    )
    outcome = _run_with_progress(denoise_job(job), name)
    if outcome.error is not None:
        raise ValueError(outcome.error)
    return outcome.result.denoised


def _run_with_progress(job, model: str):
    """Run a denoise job to its end with a napari progress bar (tqdm when headless).

    Why: the call blocks its caller (a workflow step, the generated widget); the bar at
    least shows how far it is. The Denoise dock is the non-blocking way, with Cancel.
    """
    from napari.utils import progress

    steps = 1000
    with progress(total=steps, desc=f"denoise_image ({model})") as bar:

        def advance(fraction: float) -> None:
            bar.update(max(0, min(steps, int(round(float(fraction) * steps))) - bar.n))

        return run_to_end(job, advance)
