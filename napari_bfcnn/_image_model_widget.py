"""The base of the dock widgets that pick an Image layer and a model.

Why one class: the Denoise and Interpret widgets list the viewer's images and
the installed models the same way, follow the layer selected in the viewer,
refresh when layers or model files change, and let go of the viewer when the
dock closes; only which layers they offer and follow differs (the hooks
:meth:`ImageModelWidget._offers` and :meth:`ImageModelWidget._follows`).
"""

from __future__ import annotations

from typing import Any

from magicgui.widgets import ComboBox, Container

from ._dock import on_close
from ._model_choices import model_choices
from ._model_events import Connection, connect_all, disconnect_all, refresh_events

__all__ = ["ImageModelWidget"]


class ImageModelWidget(Container):
    """A labelled container with an ``image`` and a ``model`` combo box.

    Parameters
    ----------
    napari_viewer : napari.viewer.Viewer
        The viewer whose Image layers are offered.
    """

    def __init__(self, napari_viewer) -> None:
        super().__init__(labels=True)
        self._viewer = napari_viewer
        self._models: dict[str, Any] = {}  # listed models by name, refreshed with the combo
        self._connections: list[Connection] = []
        self.image = ComboBox(label="image", choices=self._image_choices)
        self.model = ComboBox(label="model", choices=self._model_choices)

    # ------------------------------------------------------------------ hooks

    def _offers(self, layer) -> bool:
        """Whether an Image layer is listed in the image combo (default: all)."""
        return True

    def _follows(self, active, name: str, layer) -> bool:
        """Whether selecting ``active`` chooses the listed ``layer`` (default: only itself)."""
        return layer == active

    # ------------------------------------------------------------------ choices

    def _image_choices(self, _widget=None) -> list[tuple[str, Any]]:
        from napari.layers import Image

        return [
            (lyr.name, lyr)
            for lyr in self._viewer.layers
            if isinstance(lyr, Image) and self._offers(lyr)
        ]

    def _model_choices(self, _widget=None) -> list[tuple[str, str]]:
        self._models, choices = model_choices()
        return choices

    # ------------------------------------------------------------------ viewer events

    def _listen(self, on_layers, on_models, *more: Connection) -> None:
        """Follow layer, selection and model-file changes (and ``more``) until the dock closes."""
        selection = (self._viewer.layers.selection.events.active, self._on_active_layer)
        events = refresh_events(self._viewer, on_layers, on_models)
        self._connections = connect_all([*events, selection, *more])
        on_close(self.native, self._disconnect)

    def _disconnect(self, *_args) -> None:
        """Stop listening to the viewer once the dock widget is gone (subclasses add theirs)."""
        disconnect_all(self._connections)

    def _on_active_layer(self, *_args) -> None:
        self._follow_active()

    def _follow_active(self) -> None:
        """Choose the first listed layer the viewer's selection points to (see ``_follows``)."""
        active = self._viewer.layers.selection.active
        if active is None:
            return
        for name, lyr in self._image_choices():
            if self._follows(active, name, lyr) and self.image.value != lyr:
                self.image.value = lyr
                return
