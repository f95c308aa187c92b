"""One signal, emitted when user models are added, renamed or deleted.

Why: the Fine-tune widget saves models that the Denoise (and any other) widget
must list at once; both subscribe here instead of knowing about each other.
"""

from __future__ import annotations

from psygnal import Signal

__all__ = ["model_events", "notify_models_changed"]


class _ModelEvents:
    changed = Signal()


model_events = _ModelEvents()  # model_events.changed.connect(callback)


def notify_models_changed() -> None:
    """Tell every widget listing models to refresh its list (call from the main thread)."""
    from src_models.registry import clear_cache

    clear_cache()
    model_events.changed.emit()
