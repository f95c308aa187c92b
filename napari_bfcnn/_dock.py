"""Knowing when a dock widget is closed.

Why: napari's close button unparents the widget and deletes only the dock around
it, so the widget's own ``destroyed`` signal never fires; without this a closed
widget would keep listening to the viewer, and its running job would go on with
no cancel button left to stop it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable

from qtpy.QtCore import QEvent, QObject, Qt

__all__ = ["on_close", "thread_ended", "track_end", "wait_ended"]

WAIT_S = 5.0  # a closing dock waits this long at most for its stopped workers to end


def thread_ended(worker) -> threading.Event:
    """An event set in the worker's own thread as it ends (quit, cancelled or done).

    Why: a closing dock quits its workers, but they end only after their current step;
    still running once the widget's Qt objects are gone, they emit into deleted objects
    (an abort at napari's exit) or race the next viewer. The dock waits on these events.
    """
    ended = threading.Event()
    worker.finished.connect(ended.set, Qt.ConnectionType.DirectConnection)
    return ended


def track_end(events: list[threading.Event], worker) -> None:
    """Add ``worker``'s :func:`thread_ended` event to ``events``, dropping those already set."""
    events[:] = [e for e in events if not e.is_set()]
    events.append(thread_ended(worker))


def wait_ended(events: Iterable[threading.Event], seconds: float = WAIT_S) -> None:
    """Wait, at most ``seconds`` in all, until every event is set."""
    deadline = time.monotonic() + seconds
    for event in events:
        event.wait(max(0.0, deadline - time.monotonic()))


class _UndockFilter(QObject):
    """Calls back when a widget that had a parent (its dock) loses it."""

    def __init__(self, native, callback: Callable[[], object]) -> None:
        super().__init__(native)  # lives as long as the widget it watches
        self._callback = callback
        self._docked = native.parent() is not None
        native.installEventFilter(self)

    def eventFilter(self, obj, event) -> bool:  # noqa: N802 - Qt's name
        if event.type() == QEvent.Type.ParentChange:
            if obj.parent() is not None:
                self._docked = True
            elif self._docked:
                self._docked = False
                self._callback()
        return False


def on_close(native, callback: Callable[..., object]) -> None:
    """Call ``callback`` when the widget ``native`` is taken out of its dock or destroyed.

    The callback may run twice (closed, then destroyed): it must be idempotent.
    """
    native.destroyed.connect(callback)
    _UndockFilter(native, callback)
