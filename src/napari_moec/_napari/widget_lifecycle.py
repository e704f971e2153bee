"""Lifetime of the dock widget: which layers it may compress, and stopping work on close.

napari gives a plugin widget no "closing" signal: a closed dock widget is un-parented, and closing
the viewer closes its main window. :class:`CloseWatcher` watches both so that a running worker is
stopped (it would otherwise keep training, and post previews into a dead viewer).
"""

from __future__ import annotations

import weakref

import numpy as np
from napari.layers import Image
from qtpy.QtCore import QEvent, QObject

__all__ = ["CloseWatcher", "is_lazy", "is_volume", "no_source_message", "volume_data"]


def is_volume(layer) -> bool:
    """A layer the compressor can take: a 3D/4D non-RGB Image, single- or multiscale (the
    full-resolution level is compressed). Checked on metadata only, never on voxels."""
    return isinstance(layer, Image) and not layer.rgb and layer.ndim in (3, 4)


def volume_data(layer):
    """The full-resolution array of ``layer`` (level 0 of a multiscale), not read."""
    return layer.data[0] if layer.multiscale else layer.data


def is_lazy(layer) -> bool:
    """Whether the layer's voxels are not all in memory (dask, zarr, a multiscale pyramid, a
    store decoded on demand): such layers are compressed tile by tile, never read whole."""
    return layer.multiscale or not isinstance(volume_data(layer), np.ndarray)


def no_source_message(layers) -> str:
    """Why no layer can be compressed: no image at all, or each image's kind and shape."""
    images = [layer for layer in layers if isinstance(layer, Image)]
    if not images:
        return "MoEC: no image layer. Open a 3D or 4D volume (File › Open Sample › CT head)."
    why = []
    for layer in images:
        kind = "RGB" if layer.rgb else f"{layer.ndim}D"
        why.append(f"'{layer.name}' is {kind} (shape {tuple(volume_data(layer).shape)})")
    return "MoEC compresses 3D (ZYX) or 4D volumes, but " + "; ".join(why) + "."


class CloseWatcher(QObject):
    """Calls the widget's ``shutdown()`` when the dock widget or napari's main window closes.

    An event filter on the widget (napari undocks a closed plugin widget with ``setParent(None)``;
    a plain close sends Close) and, once :meth:`watch_window` is called, on the main window
    (closing the viewer closes it). A child of the widget that holds it weakly, so closing
    napari still frees the widget.
    """

    def __init__(self, widget) -> None:
        super().__init__(widget)
        self._widget = weakref.ref(widget)
        self._window: QObject | None = None
        widget.installEventFilter(self)

    def watch_window(self) -> None:
        """Watch the napari main window for Close: closing the viewer must end the worker."""
        widget = self._widget()
        window = widget.window() if widget is not None else None
        if window is not None and window is not widget and window is not self._window:
            if self._window is not None:
                self._window.removeEventFilter(self)
            window.installEventFilter(self)
            self._window = window

    def eventFilter(self, obj: QObject, event: QEvent) -> bool:
        # getattr: Qt may still deliver events while Python tears the widget down at exit,
        # when its attributes are gone; an exception here makes Qt abort the interpreter.
        ref = getattr(self, "_widget", None)
        widget = ref() if ref is not None else None
        if widget is None:
            return False
        kind = event.type()
        closing = (obj is getattr(self, "_window", None) and kind == QEvent.Type.Close) or (
            obj is widget
            and (
                kind == QEvent.Type.Close
                or (kind == QEvent.Type.ParentChange and widget.parent() is None)
            )
        )
        if closing:
            widget.shutdown()
        return False
