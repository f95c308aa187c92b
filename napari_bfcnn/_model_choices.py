"""The model combo box shared by the dock widgets: labels, tooltips, broken models disabled.

Why one module: the Denoise and Interpret widgets must list the same models
the same way ("auto" first, gray/colour and size, unusable files greyed out
with the reason as tooltip), so both build their combo from here.
"""

from __future__ import annotations

import logging
from typing import Any

from ._workers import AUTO

__all__ = ["AUTO_TOOLTIP", "decorate_model_combo", "model_choices", "model_label", "model_tooltip"]

log = logging.getLogger(__name__)

AUTO_TOOLTIP = (
    "colour model for RGB layers, microscopy model for camera data (12/16-bit integers), "
    "gray model for other gray or multichannel layers"
)


def _fmt_params(n: int) -> str:
    if n >= 1_000_000:
        return f"{n / 1e6:.1f} M params"
    if n >= 1_000:
        return f"{n / 1e3:.0f} k params"
    return f"{n} params"


def _colour_word(channels: int) -> str:
    return "colour" if channels >= 3 else "gray"


def model_label(info) -> str:
    """Combo text for a model: name, gray/colour and size, or why it is unavailable."""
    if info.error is not None:
        return f"{info.name}  (unavailable)"
    return f"{info.name}  ({_colour_word(info.channels)}, {_fmt_params(info.parameters)})"


def model_tooltip(info) -> str:
    """Tooltip for a model: description, architecture, noise range, file."""
    if info.error is not None:
        return f"Cannot use this model: {info.error}"
    lo, hi = info.sigma_range
    lines = [
        info.description or "(no description)",
        f"{info.kind or 'model'}, {info.channels} channel(s), {info.parameters:,} parameters",
        f"trained for noise sigma {lo:g}-{hi:g} (0-255 scale); receptive field "
        f"{info.receptive_field} px",
        f"{'bundled' if info.builtin else 'user'} model: {info.path}",
    ]
    return "\n".join(lines)


def model_choices() -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Listed models by name, and the combo choices: ``("auto (by layer)", AUTO)`` then each model.

    Why it never raises: a broken model folder must not break a dock widget;
    the failure is logged and only "auto" is offered.
    """
    from src_models import list_models

    try:
        infos = list_models()
    except Exception as err:
        log.warning("listing models failed: %s", err)
        infos = []
    models = {m.name: m for m in infos}
    return models, [("auto (by layer)", AUTO)] + [(model_label(m), m.name) for m in infos]


def decorate_model_combo(combo, models: dict[str, Any]) -> None:
    """Give each item of a magicgui model ComboBox its tooltip; disable unusable models.

    Parameters
    ----------
    combo : magicgui.widgets.ComboBox
        Filled from :func:`model_choices`.
    models : dict
        The models returned with those choices, by name.
    """
    from qtpy.QtCore import Qt

    native = combo.native
    items = native.model()
    for i in range(native.count()):
        value = native.itemData(i)
        info = models.get(value) if isinstance(value, str) else None
        if value == AUTO:
            tip = AUTO_TOOLTIP
        elif info is not None:
            tip = model_tooltip(info)
        else:
            continue
        native.setItemData(i, tip, Qt.ItemDataRole.ToolTipRole)
        item = items.item(i) if hasattr(items, "item") else None
        if item is not None:
            item.setEnabled(info is None or info.error is None)
