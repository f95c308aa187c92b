"""Background denoising: a generator job and its napari ``thread_worker`` wrapper.

Why a generator: each yielded fraction is a point where ``worker.quit()``
stops the run (between tiles), and where the progress bar moves. Every error
is caught in the job and returned as a message, so the user sees a short
notification, never napari's traceback dialog.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Generator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._layers import LayerError, LayerInput
from ._planes import PlaneResult, ResultTooLarge, iter_denoise, plan_planes

__all__ = [
    "DenoiseJob",
    "DenoiseOutcome",
    "denoise_job",
    "make_worker",
    "resolve_model",
    "result_label",
]

log = logging.getLogger(__name__)

AUTO = "auto"


@dataclass(frozen=True)
class DenoiseJob:
    """One run: which data, which model, how to split it."""

    inp: LayerInput
    model: str  # a model name or path, or "auto"
    tile: int | None = None
    fixed: dict[int, int] = field(default_factory=dict)  # preview: loop axis -> index
    with_noise: bool = False
    offset: float | str | None = None  # black level: a value, "auto" or None (engine default)
    tta: int = 1  # test-time augmentation: transforms averaged (1 = off)
    strength: float = 1.0  # blend: input + strength * (denoised - input)


@dataclass
class DenoiseOutcome:
    """What a job returns: arrays on success, a message on failure."""

    model: str = ""
    result: PlaneResult | None = None
    error: str | None = None
    seconds: float = 0.0
    fixed: dict[int, int] = field(default_factory=dict)


def resolve_model(name: str, inp: LayerInput) -> str:
    """``"auto"`` -> the engine's default for the layer: colour for RGB, ``microscopy``
    for camera data (12/16-bit integers), else gray.

    Why the dtype: the Interpret widget must explain camera data with the model that
    the Denoise widget and the command line denoise them with.
    """
    if name != AUTO:
        return name
    from src_models import default_model

    return default_model(inp.channels, inp.rgb, np.dtype(inp.data.dtype))


def result_label(
    model: str, tta: int = 1, preview: bool = False, strength: float = 1.0
) -> str:
    """The model part of an output's name: ``"gray"``, ``"gray, TTA ×8"``,
    ``"gray, strength 0.5"``, ``"gray, preview"``.

    Why: a run with test-time augmentation or a lower strength, or a one-slice preview,
    is another result; it gets its own layer instead of replacing the plain all-planes
    run's (a preview replaces only the previous preview with the same settings).
    """
    label = model if tta == 1 else f"{model}, TTA \u00d7{tta}"
    if strength != 1.0:
        label = f"{label}, strength {strength:g}"
    return f"{label}, preview" if preview else label


def denoise_job(job: DenoiseJob) -> Generator[float, None, DenoiseOutcome]:
    """Load the model and denoise plane by plane; yield progress in [0, 1].

    Returns
    -------
    DenoiseOutcome
        ``error`` holds a one-line message if anything failed.
    """
    t0 = time.perf_counter()
    name = job.model
    try:
        from src_models import load_model

        name = resolve_model(job.model, job.inp)
        yield 0.0
        denoiser = load_model(name)
        yield 0.0  # a Cancel pressed while the model loaded stops here
        name = getattr(denoiser, "name", name) or name
        plan = plan_planes(  # channels stay together; the engine groups them for the model
            job.inp.data.shape,
            job.inp.channel_axis,
            joint=job.inp.channel_axis is not None,
            alpha=job.inp.alpha,
            fixed=job.fixed,
        )
        result = yield from iter_denoise(
            denoiser,
            job.inp.data,
            plan,
            tile=job.tile,
            with_noise=job.with_noise,
            offset=job.offset,
            tta=job.tta,
            strength=job.strength,
        )
        name = result_label(name, job.tta, preview=bool(job.fixed), strength=job.strength)
    except ResultTooLarge as err:  # says what to do instead
        return DenoiseOutcome(name, error=f"not enough memory: {err}")
    except MemoryError:  # numpy's own says only what it failed at
        return DenoiseOutcome(
            name, error="not enough memory: try a smaller tile size or preview one slice"
        )
    except (LayerError, ValueError, OSError) as err:  # ModelFileError, ConfigError included
        return DenoiseOutcome(name, error=str(err))
    except Exception as err:  # a bug: keep the traceback in the log, show one line
        log.exception("denoising failed")
        return DenoiseOutcome(name, error=f"denoising failed: {type(err).__name__}: {err}")
    if len(result.skipped) == len(plan.planes):
        return DenoiseOutcome(name, error=f"'{job.inp.name}' has no finite pixel (all NaN)")
    return DenoiseOutcome(name, result, None, time.perf_counter() - t0, dict(job.fixed))


def make_worker(job: DenoiseJob) -> Any:
    """A not-yet-started napari ``GeneratorWorker`` running :func:`denoise_job`.

    Connect to ``yielded`` (fraction done), ``returned`` (:class:`DenoiseOutcome`),
    ``aborted`` and ``finished``, then call ``start()``; ``quit()`` cancels.
    """
    from napari.qt.threading import create_worker

    return create_worker(denoise_job, job, _start_thread=False)
