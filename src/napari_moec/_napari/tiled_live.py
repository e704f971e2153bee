"""The live view of a tiled compression: two lazy multiscale layers over the store being written,
which fill in tile by tile.

The layers are made on the Start click (creating a layer is napari's one slow step) from the
job's geometry, blank until the run has written the store's metadata; every finished tile then
shows at the next refresh (at most :data:`REFRESH_INTERVAL` apart). What the user looks at
drives the work: the tiles in view are trained first (``TiledCompressor.prioritize``) and the
worker decodes the view's new tile into the shared cache before the GUI thread refreshes
(:class:`~.tiled_run.ViewPrefetch`), so the GUI thread reads chunks' bytes and copies.
"""

from __future__ import annotations

import numpy as np
from qtpy.QtCore import QTimer

from .layers import LABELS_OPACITY, layer_names
from .lazy import pyramid

__all__ = ["REFRESH_INTERVAL", "TiledLiveLayers", "shown_views"]

#: Milliseconds between two refreshes of the live layers (tiles can finish many per second).
REFRESH_INTERVAL = 250


def shown_views(viewer, layer) -> list:
    """The lazy views napari reads for ``layer`` now: the displayed part of its current level
    at the current slice, and the coarsest level's plane (the thumbnail). Mirrors napari 0.9's
    multiscale slicing (``_ScalarFieldSliceRequest``); a mismatch only costs a cache miss."""
    dims = viewer.dims
    levels = list(layer.data)
    offset = dims.ndim - layer.ndim
    displayed = [a - offset for a in dims.displayed if a - offset >= 0]
    point = np.asarray(layer.world_to_data(dims.point), dtype=float)
    factors = layer.downsample_factors
    coarsest = len(levels) - 1
    level = coarsest if dims.ndisplay == 3 else int(layer.data_level)
    views = []
    for lv in dict.fromkeys((level, coarsest)):
        shape = levels[lv].shape
        key = []
        for axis, n in enumerate(shape):
            if axis in displayed:
                if lv == level and dims.ndisplay == 2:
                    lo, hi = layer.corner_pixels[:, axis]
                    key.append(slice(int(lo), int(hi) + 1))
                else:
                    key.append(slice(None))
            else:
                index = np.clip(point[axis] / factors[lv][axis], 0, n - 1)
                key.append(int(np.round(index)))
        views.append(levels[lv][tuple(key)])
    return views


class TiledLiveLayers:
    """The "<name> MoEC" and "<name> experts" layers of a tiled run, over ``blocks``
    (:class:`~.lazy_blocks.LiveStoreBlocks`), with the source's scale, translate, units and
    contrast limits. Layers of those names from an earlier run are replaced.

    Parameters
    ----------
    viewer, source
        The viewer and the Image layer being compressed.
    blocks
        The store being written.
    prefetch
        Where the views shown now are handed to the worker.
    job
        The :class:`~napari_moec.tiled.runner.TiledCompressor`, told which tiles are in view.
    """

    def __init__(self, viewer, source, blocks, prefetch, job) -> None:
        self.viewer = viewer
        self.blocks = blocks
        self.prefetch = prefetch
        self.job = job
        self.names = layer_names(source.name)
        for layer in list(viewer.layers):
            if layer.name in (self.names.image, self.names.labels):
                viewer.layers.remove(layer)
        common = {
            "scale": tuple(source.scale),
            "translate": tuple(source.translate),
            "units": tuple(source.units),
            "multiscale": True,
        }
        self.image_layer = viewer.add_image(
            pyramid(blocks), name=self.names.image, colormap="gray",
            contrast_limits=tuple(source.contrast_limits), **common,
        )  # fmt: skip
        self.labels_layer = viewer.add_labels(
            pyramid(blocks, labels=True), name=self.names.labels, opacity=LABELS_OPACITY,
            **common,
        )  # fmt: skip
        self._timer = QTimer()
        self._timer.setSingleShot(True)
        self._timer.setInterval(REFRESH_INTERVAL)
        self._timer.timeout.connect(self.refresh)
        self._emitters = [viewer.dims.events.current_step, viewer.dims.events.ndisplay]
        for emitter in self._emitters:
            emitter.connect(self._view_changed)
        self.follow()

    def _view_changed(self, event=None) -> None:
        # After napari's own handlers: the layers have their new level and corners by now.
        self.follow()

    def _layers(self) -> list:
        """Our layers still in the viewer (the user may delete one during the run)."""
        return [layer for layer in (self.image_layer, self.labels_layer)
                if layer in self.viewer.layers]  # fmt: skip

    def follow(self) -> None:
        """Hand the views shown now to the worker and their tiles to the job (microseconds)."""
        layers = self._layers()
        if not layers:
            return
        views = shown_views(self.viewer, layers[0])
        self.prefetch.set(views)
        if self.job is not None:
            self.job.prioritize(set().union(*(v.block_indices() for v in views)))

    def tile_finished(self) -> None:
        """A tile landed: refresh soon (coalescing tiles that land close together)."""
        if not self._timer.isActive():
            self._timer.start()

    def refresh(self) -> None:
        """Re-read the shown planes (new tiles appear), then follow the view."""
        for layer in self._layers():
            layer.refresh()
        self.follow()

    def finish(self) -> None:
        """The run ended: a last refresh, and the job is no longer steered."""
        self._timer.stop()
        self.job = None
        for emitter in self._emitters:
            emitter.disconnect(self._view_changed)
        self._emitters = []
        self.refresh()
