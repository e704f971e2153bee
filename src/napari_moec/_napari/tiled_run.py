"""What runs off the GUI thread for big volumes: a tiled compression driven from a napari worker,
warming the live view's cache as tiles land, and opening a store or a big ``.moec`` lazily.

Like ``widget_run`` for the single-volume path, this module holds no Qt: its generators are
handed to napari workers, which relay their events to the dock widget.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Generator
from dataclasses import dataclass
from pathlib import Path

from ..generators import relay
from .layers import expert_indices
from .widget_run import Loaded, Outcome, WorkerFailure

__all__ = ["LazyResult", "ViewPrefetch", "compress_tiles", "open_result"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LazyResult:
    """A result decoded on demand: a tiled store (a run's or one opened) or a big ``.moec``.

    ``blocks`` is what its layers decode from (:mod:`._lazy_blocks`); ``data_range`` the
    original's value range, stored with it (SSIM's L). ``report`` is the run's
    :class:`~napari_moec.tiled.events.TiledReport` (None for an opened store or file);
    ``store`` the store's path, ``compressed`` the ``.moec`` (one of the two is set).
    """

    name: str
    blocks: object
    data_range: float
    store: str | None = None
    compressed: object | None = None
    report: object | None = None

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.blocks.shape)

    @property
    def stopped(self) -> bool:
        return bool(self.report is not None and self.report.stopped)

    @property
    def max_error(self) -> float | None:
        """The bound every decoded voxel keeps (a big ``.moec``'s, or a tiled store's
        ``"bound"``), or None: what Compare states as guaranteed."""
        if self.compressed is not None:
            return getattr(self.compressed, "max_error", None)
        spec = getattr(self.blocks, "spec", None)
        return None if spec is None else spec.values.max_error


class ViewPrefetch:
    """The views the live layers show now, handed by the GUI thread to the worker, which
    decodes them into the shared cache after each finished tile: napari's refresh then finds
    the new tile decoded and only copies (thread-safe; a stale view only costs a cache miss)."""

    def __init__(self) -> None:
        self._views: tuple = ()
        self._lock = threading.Lock()

    def set(self, views) -> None:
        with self._lock:
            self._views = tuple(views)

    def warm(self) -> None:
        with self._lock:
            views = self._views
        for view in views:
            try:
                view.read()
            except Exception:  # the GUI's own read will raise it where the user sees it
                log.debug("prefetch of %r failed", view, exc_info=True)


def compress_tiles(job, prefetch: ViewPrefetch, live, name: str) -> Generator:
    """Drive ``job.run()`` (a :class:`~napari_moec.tiled.runner.TiledCompressor`): yields its
    events and returns a :class:`LazyResult` (called ``name``) on the store, also when stopped
    (then resumable).

    ``live`` (:class:`~.lazy_blocks.LiveStoreBlocks`) is attached to the store as soon as its
    metadata exists, and the views in ``prefetch`` are decoded after each tile, both here so
    that the GUI thread only copies. A finished ``.ozx`` run has packed its folder: ``live``
    then reads the ``.ozx`` (a stopped one keeps its folder, which a new run resumes).
    """
    from ..tiled.events import TiledStarted, TileFinished

    def passed_on(event):
        if isinstance(event, TiledStarted):
            live.attach()
        elif isinstance(event, TileFinished):
            prefetch.warm()
        return event

    run = job.run()
    try:
        report = yield from relay(run, passed_on)
    except Exception as exc:
        raise WorkerFailure(str(exc)) from exc
    finally:
        run.close()  # a worker quit mid-run: the runner stops its tiles and closes its cluster
    live.attach()
    store = job.root  # the folder the run writes; a finished .ozx run packed it into job.dest
    if not report.stopped and job.zipped:
        live.reattach(job.dest)
        store = job.dest
    prefetch.warm()
    spec = live.spec
    span = float(spec.values.vmax - spec.values.vmin) if spec is not None else 1.0
    return LazyResult(name, live, span, store=str(store), report=report)


def open_result(path: str) -> Loaded:
    """Open a ``.moec`` file (lazily when big) or a tiled store (always lazily) for Load…;
    runs in a worker (a small file is decoded whole here)."""

    from .reader import _is_tiled, read_moec, read_tiled, store_name

    try:
        if _is_tiled(path):
            store, layer_data = read_tiled(path)
            span = float(store.spec.values.vmax - store.spec.values.vmin)
            result = LazyResult(store_name(path), layer_data[0][0][0].blocks, span,
                                store=store.path)  # fmt: skip
            return Loaded(str(path), result, layer_data)
        compressed, layer_data = read_moec(path)
    except Exception as exc:
        raise WorkerFailure(str(exc)) from exc
    (image, meta, _), (shown, _, _) = layer_data
    if meta.get("multiscale"):
        header = compressed.header
        result = LazyResult(Path(path).name.removesuffix(".moec"), image[0].blocks,
                            float(header.vmax - header.vmin), compressed=compressed)  # fmt: skip
        return Loaded(str(path), result, layer_data)
    labels = expert_indices(shown)
    return Loaded(str(path), Outcome(compressed, image, labels), layer_data)
