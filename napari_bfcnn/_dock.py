"""Knowing when a dock widget is closed.

Why: napari's close button unparents the widget and deletes only the dock around
it, so the widget's own ``destroyed`` signal never fires; without this a closed
widget would keep listening to the viewer, and its running job would go on with
no cancel button left to stop it.
"""

from __future__ import annotations

from collections.abc import Callable

from qtpy.QtCore import QEvent, QObject

__all__ = ["on_close"]


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
