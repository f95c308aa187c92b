"""One signal, emitted when user models are added, renamed or deleted; and the wiring to it.

Why: the Fine-tune widget saves models that the Denoise (and any other) widget
must list at once; both subscribe here instead of knowing about each other.
Every dock widget also refreshes on the same viewer events and must let go of
them when it closes, so that wiring lives here too.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Any

from psygnal import Signal

__all__ = [
    "Connection",
    "connect_all",
    "disconnect_all",
    "model_events",
    "notify_models_changed",
    "refresh_events",
]

Connection = tuple[Any, Callable[..., Any]]  # (emitter, callback)


class _ModelEvents:
    changed = Signal()


model_events = _ModelEvents()  # model_events.changed.connect(callback)


def notify_models_changed() -> None:
    """Tell every widget listing models to refresh its list (call from the main thread)."""
    from src_models.registry import clear_cache

    clear_cache()
    model_events.changed.emit()


def refresh_events(
    viewer, on_layers: Callable[..., Any], on_models: Callable[..., Any]
) -> list[Connection]:
    """The events after which a widget's layer and model lists are stale, with their callbacks.

    Why one list: layers inserted, removed or renamed, and model files changed
    (trained, renamed, deleted), are what every dock widget must follow.
    """
    layers = viewer.layers
    return [
        (layers.events.inserted, on_layers),
        (layers.events.removed, on_layers),
        (layers.events.renamed, on_layers),
        (model_events.changed, on_models),
    ]


def connect_all(connections: list[Connection]) -> list[Connection]:
    """Connect each callback to its emitter; returns the list, for :func:`disconnect_all`."""
    for emitter, callback in connections:
        emitter.connect(callback)
    return connections


def disconnect_all(connections: list[Connection]) -> None:
    """Disconnect each pair and empty the list.

    Why it never raises: a closing dock may outlive the viewer's emitters.
    """
    for emitter, callback in connections:
        with contextlib.suppress(Exception):
            emitter.disconnect(callback)
    connections.clear()
