"""Background fine-tuning: the engine's blocking ``finetune`` in a thread, reported through a queue.

Why a queue (the careamics pattern): ``finetune`` reports through callbacks from
inside its own loop, so it runs in a plain thread that puts each report on a queue,
and a napari generator worker drains that queue and ``yield``\\ s the reports to the
main thread, where the widget draws them. Stop is an event the training polls every
step, so it ends within about a step and still saves the best model. Closing the widget
sets it; so does quitting the worker (napari quits every worker when it quits), through
the worker's ``aborted`` signal, which also waits for the training thread to save and
end before the worker reports ``finished`` (so the lock is not freed, nor napari's exit
let through, while it still writes): superqt leaves the generator's loop on abort
without closing the generator, so :func:`train_job`'s ``finally`` would run only once
the generator is garbage-collected.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Generator, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["TrainJob", "TrainOutcome", "make_train_worker", "train_job"]

log = logging.getLogger(__name__)

_DONE = object()
POLL_S = 0.1


@dataclass
class TrainJob:
    """One training run: settings, data and the stop switch."""

    settings: Any  # src_models.finetune.FinetuneSettings
    images: Sequence[Any]  # SourceImage
    targets: Sequence[Any] | None = None
    resume: bool = False
    overwrite: bool = False
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None  # the training thread, once started

    def stop_and_wait(self) -> None:
        """Ask the training to stop and wait until it has saved and ended."""
        self.stop.set()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join()


@dataclass
class TrainOutcome:
    """The engine's result, or a one-line message."""

    result: Any = None  # src_models.finetune.FinetuneResult
    error: str | None = None
    stopped_early: bool = False  # Stop pressed while the data were prepared: nothing trained


def train_job(job: TrainJob) -> Generator[Any, None, TrainOutcome]:
    """Run ``finetune`` in a thread; yield its reports (None as a heartbeat) and return the outcome.

    Yields
    ------
    TrainProgress, ValidationPreview or None
    """
    from src_models.finetune import StoppedBeforeTraining, finetune

    reports: queue.Queue = queue.Queue()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            box["result"] = finetune(
                job.settings,
                job.images,
                targets=job.targets,
                resume=job.resume,
                overwrite=job.overwrite,
                on_progress=reports.put,
                on_preview=reports.put,
                should_stop=job.stop.is_set,
            )
        except StoppedBeforeTraining:
            box["stopped_early"] = True
        except MemoryError:
            box["error"] = "not enough memory: use smaller patches, a smaller batch or fewer layers"
        except (ValueError, OSError) as err:  # ConfigError, ModelFileError included
            box["error"] = str(err)
        except Exception as err:  # a bug: keep the traceback in the log, show one line
            log.exception("training failed")
            box["error"] = f"training failed: {type(err).__name__}: {err}"
        finally:
            reports.put(_DONE)

    thread = threading.Thread(target=run, name="napari-bfcnn-training", daemon=True)
    job.thread = thread
    thread.start()
    try:
        while True:
            try:
                item = reports.get(timeout=POLL_S)
            except queue.Empty:
                yield None  # lets the worker notice quit() while training is quiet
                continue
            if item is _DONE:
                break
            yield item
    finally:
        if thread.is_alive():  # closed early (garbage-collected): stop the training, let it save
            job.stop.set()
            thread.join()
    return TrainOutcome(
        result=box.get("result"), error=box.get("error"), stopped_early="stopped_early" in box
    )


def make_train_worker(job: TrainJob) -> Any:
    """A not-yet-started napari ``GeneratorWorker`` running :func:`train_job`.

    Quitting it sets ``job.stop`` and waits for the training to save and end (see the
    module docstring).
    """
    from napari.qt.threading import create_worker
    from qtpy.QtCore import Qt

    worker = create_worker(train_job, job, _start_thread=False)
    # direct: run in the worker's thread as it aborts, even while the main thread waits for it
    worker.aborted.connect(job.stop_and_wait, Qt.ConnectionType.DirectConnection)
    return worker
