"""Results of the dock widget: the current result and Save…, Load… and Compare on it.

:class:`ResultsController` owns the result (of the last run or load), its name, the Load and
Compare workers and the last comparison; it writes into the widget's panel (``RunPanel``: the
status line, the Result readout, the progress bar) and asks the widget for the Source layer
only when Compare is pressed. Load… and Compare run in napari workers (decoding and SSIM take
seconds); their results come back to the GUI thread, which only adds or updates layers. A
result is an in-memory ``Outcome`` (a ``.moec`` decoded whole) or a ``LazyResult`` (a tiled
store, or a big ``.moec``, decoded on demand): those are saved as stores and compared block by
block (``stream_compare``), never read whole. Runs hand their result over with :meth:`take`
and :meth:`take_lazy`.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ..compressed import Compressed
from ..errors import ConfigError
from .layers import layer_names, moec_metadata
from .lazy import pyramid
from .store_files import save_store
from .stream_compare import CompareProgress, StreamComparison, stream_compare
from .tiled_run import LazyResult, open_result
from .widget_lifecycle import is_lazy, volume_data
from .widget_panel import RunPanel
from .widget_run import Comparison, Loaded, describe_error, measure

__all__ = ["ResultsController", "grid_of"]


def grid_of(viewer):
    """Grid settings: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


class ResultsController:
    """Save, load and compare the current result.

    Parameters
    ----------
    panel
        The widget's displays (status, Result readout, progress bar, viewer).
    parent
        The widget, parent of the file dialogs.
    compare_button
        Greyed while a comparison runs.
    source
        The widget's Source layer now (or None), for Compare.
    busy_changed
        Called when a load starts or ends (the widget greys Start and Load… meanwhile).

    Attributes
    ----------
    result
        ``Outcome`` or ``LazyResult`` of the last run or load, or None.
    load_worker, compare_worker
        The running Load… and Compare workers, or None.
    last_comparison
        The last ``Comparison`` or ``StreamComparison`` shown.
    """

    def __init__(
        self,
        panel: RunPanel,
        parent,
        compare_button,
        source: Callable[[], object],
        busy_changed: Callable[[], None],
    ) -> None:
        self.panel, self.parent, self.compare_button = panel, parent, compare_button
        self.viewer = panel.viewer
        self.readouts, self.status, self.progress = panel.readouts, panel.status, panel.progress
        self.source_layer = source
        self.busy_changed = busy_changed
        self.result = None
        self.result_name = "volume"
        self.load_worker = None
        self.compare_worker = None
        self.last_comparison = None
        self._loading_path = ""
        self._compare_original = None

    def take(self, outcome, name: str) -> None:
        """A finished single-volume run's outcome becomes the result (its layers are shown)."""
        self.result = outcome
        self._show_result(outcome.compressed, name)

    def take_lazy(self, result: LazyResult, tiles_done: tuple[int, int] = (0, 0)) -> None:
        """A tiled run's result becomes the current one; ``tiles_done`` (done, total) words
        a stopped run's readout."""
        self.result = result
        self._show_lazy_result(result, tiles_done)

    def _show_lazy_result(self, result: LazyResult, tiles_done: tuple[int, int] = (0, 0)) -> None:
        """Readouts and status of a tiled run, an opened store or a big ``.moec``."""
        report = result.report
        if report is not None:
            text = (f"{report.store_bytes:,} B, {report.ratio:.0f}x, "
                    f"PSNR {report.psnr:.2f} dB")  # fmt: skip
            if report.stopped:
                done, total = tiles_done
                text += f" over the {done} of {total} tiles finished"
        elif result.compressed is not None:
            c = result.compressed
            psnr = f"PSNR {c.psnr:.2f} dB" if c.psnr is not None else "PSNR unknown"
            text = f"{c.nbytes:,} B, {c.ratio:.0f}x, {psnr}"
        else:
            text = f"tiled store {result.store}"
        if result.max_error is not None:
            text += f", max error ≤ {result.max_error:g} (guaranteed)"
        self.result_name = result.name
        self.readouts["result"].setText(text)
        if report is not None and report.stopped:
            self.status.setText(
                f"Stopped: {text}. Finished tiles are kept; Start (same layer and settings) "
                "resumes, Save keeps the store as it is."
            )
        else:
            self.status.setText(f"Done: {text}.")

    def _show_result(self, compressed: Compressed, name: str) -> None:
        """Readouts, layer metadata and a notification for a finished or loaded volume."""
        meta = moec_metadata(compressed)
        psnr, ssim = meta["moec_psnr"], meta["moec_ssim"]
        quality = f"PSNR {psnr:.2f} dB" if psnr is not None else "PSNR unknown"
        if ssim is not None:
            quality += f", SSIM {ssim:.3f}"
        if compressed.max_error is not None:
            quality += f", max error ≤ {compressed.max_error:g} (guaranteed)"
        text = f"{compressed.nbytes:,} B, {compressed.ratio:.0f}x, {quality}"
        self.result_name = name
        self.readouts["result"].setText(text)
        names = layer_names(name)
        for layer in self.viewer.layers:
            if layer.name in (names.image, names.labels):
                layer.metadata.update(meta)
        stopped = ""
        if compressed.report is not None and compressed.report.stopped_early:
            stopped = " (stopped early: best model so far)"
        self.status.setText(f"Done{stopped}: {text}.")

    def save(self, path: str | Path | None = None) -> Path | None:
        """Write the current result (atomic: a failed save changes nothing): a ``.moec`` file,
        or for a tiled result its store, as a folder (``.ome.zarr``) or one ``.ozx`` file.

        Parameters
        ----------
        path
            Target; None asks with a file dialog. ``.moec`` (``.ome.zarr`` for a store) is
            appended when missing.
        """
        if self.result is None:
            show_error("MoEC: nothing to save yet. Train (Start) or Load… a volume first.")
            return None
        store = isinstance(self.result, LazyResult) and self.result.store is not None
        if path is None:
            base = self.result_name
            if store:
                path, _ = QFileDialog.getSaveFileName(
                    self.parent, "Save tiled store", f"{base}.ozx",
                    "Zipped OME-Zarr (*.ozx);;OME-Zarr folder (*.ome.zarr)",
                )  # fmt: skip
            else:
                path, _ = QFileDialog.getSaveFileName(self.parent, "Save .moec", f"{base}.moec",
                                                      "MoEC (*.moec)")  # fmt: skip
            if not path:
                return None
        if store:
            try:
                saved = save_store(self.result.store, path)
            except (OSError, ConfigError) as exc:
                show_error(f"MoEC: could not save {path}: {exc}")
                return None
            show_info(f"Saved {saved.name}.")
            return saved
        path = Path(path)
        if path.suffix.lower() != ".moec":
            path = path.with_name(path.name + ".moec")
        compressed = self.result.compressed
        try:
            compressed.save(path)
        except OSError as exc:
            show_error(f"MoEC: could not save {path}: {exc}")
            return None
        show_info(f"Saved {path.name}: {compressed.nbytes:,} bytes, {compressed.ratio:.0f}x.")
        return path

    def load(self, path: str | Path | None = None):
        """Open a ``.moec`` file or a tiled store (``.ozx`` file or ``.ome.zarr`` folder) with
        the plugin's reader, in a worker, and make it the current result; the layers appear
        when the worker returns (lazy ones for stores and big files). Returns the worker (None
        when no file was chosen or a load is already running)."""
        if self.load_worker is not None:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(
                self.parent, "Open .moec or tiled store", "", "MoEC (*.moec *.ozx)"
            )
            if not path:
                return None
        worker = create_worker(open_result, str(path), _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self._on_load_error)
        worker.finished.connect(self._on_load_finished)
        self.load_worker = worker
        self._loading_path = str(path)
        self.status.setText(f"Opening {Path(path).name}…")
        self.busy_changed()
        worker.start()
        return worker

    def _on_loaded(self, loaded: Loaded) -> None:
        for data, meta, kind in loaded.layer_data:
            getattr(self.viewer, f"add_{kind}")(data, **meta)
        self.result = loaded.outcome
        if isinstance(loaded.outcome, LazyResult):
            self._show_lazy_result(loaded.outcome)
        else:
            name = Path(loaded.path).name.removesuffix(".moec")
            self._show_result(loaded.outcome.compressed, name)

    def _on_load_error(self, exc: BaseException) -> None:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        message = f"MoEC: could not open {self._loading_path}: {cause}"
        self.status.setText(message)
        show_error(message)

    def _on_load_finished(self) -> None:
        self.load_worker = None
        self.busy_changed()

    def compare(self) -> None:
        """PSNR/SSIM, a difference layer and a grid view of original vs decompressed: whole
        volumes for in-memory results, block by block for lazy ones (bounded memory, lazy
        difference)."""
        original = self.source_layer()
        if self.result is None:
            show_error("MoEC: nothing to compare yet. Train (Start) or Load… a volume first.")
            return
        lazy = isinstance(self.result, LazyResult)
        shape = self.result.shape if lazy else self.result.image.shape
        if original is None or tuple(volume_data(original).shape) != tuple(shape):
            show_error(f"MoEC: choose the original volume (shape {shape}) as Source to compare.")
            return
        self.compare_button.setEnabled(False)
        self.status.setText("Comparing…")
        if lazy or is_lazy(original):
            if not lazy:  # an in-memory result against a lazy original: cheap to wrap
                from .lazy_blocks import MoecBlocks

                c = self.result.compressed
                span = float(c.header.vmax - c.header.vmin)
                self.result = LazyResult(self.result_name, MoecBlocks(c), span, compressed=c)
            result = self.result
            worker = create_worker(stream_compare, volume_data(original), result.blocks,
                                   result.data_range, _start_thread=False,
                                   _ignore_errors=True)  # fmt: skip
            worker.yielded.connect(self._on_compare_progress)
            self.progress.setRange(0, 0)
        else:
            worker = create_worker(measure, original.data, self.result.image,
                                   _start_thread=False, _ignore_errors=True)  # fmt: skip
        self._compare_original = original
        worker.returned.connect(self._show_comparison)
        worker.errored.connect(self._on_compare_error)
        worker.finished.connect(self._on_compare_finished)
        self.compare_worker = worker
        worker.start()

    def _on_compare_progress(self, event: CompareProgress) -> None:
        self.progress.setRange(0, event.total)
        self.progress.setValue(event.done)
        self.progress.setFormat("comparing %v / %m blocks")

    def _on_compare_error(self, exc: BaseException) -> None:
        show_error(describe_error(exc))

    def _on_compare_finished(self) -> None:
        self.compare_worker = None
        self._compare_original = None
        self.compare_button.setEnabled(self.result is not None)
        self.progress.setRange(0, 1)
        self.progress.setValue(1)
        self.progress.setFormat("%p%")

    def _show_comparison(self, cmp: Comparison | StreamComparison) -> None:
        original = self._compare_original
        names = layer_names(self.result_name)
        decoded_name, diff_name = names.image, names.difference
        layers = {layer.name: layer for layer in self.viewer.layers}
        common = {
            "scale": tuple(original.scale),
            "translate": tuple(original.translate),
            "units": tuple(original.units),
        }
        lazy = isinstance(cmp, StreamComparison)
        if decoded_name not in layers:
            decoded = pyramid(self.result.blocks) if lazy else self.result.image
            self.viewer.add_image(
                decoded,
                name=decoded_name,
                contrast_limits=tuple(original.contrast_limits),
                multiscale=lazy,
                **common,
            )
        bound = (cmp.max_abs if lazy else float(np.abs(cmp.difference).max())) or 1.0
        if diff_name in layers:  # a lazy difference is multiscale: replace the layer
            self.viewer.layers.remove(diff_name)
        self.viewer.add_image(
            cmp.difference,
            name=diff_name,
            colormap="PiYG",
            contrast_limits=(-bound, bound),
            multiscale=lazy,
            **common,
        )
        keep = {original.name, decoded_name, diff_name}
        for layer in self.viewer.layers:
            layer.visible = layer.name in keep
        grid = grid_of(self.viewer)
        grid.shape = (1, -1)  # one row: original | decompressed | difference
        grid.enabled = True
        self.viewer.reset_view()  # fit each viewbox to its volume
        ssim = "n/a (volume thinner than 7 voxels)" if cmp.ssim is None else f"{cmp.ssim:.4f}"
        text = f"PSNR {cmp.psnr:.2f} dB, SSIM {ssim}, max |error| {bound:g}"
        result = self.result
        if isinstance(result, LazyResult):
            promised = result.max_error
        else:
            promised = getattr(getattr(result, "compressed", None), "max_error", None)
        if promised is not None:
            text += f" (guaranteed ≤ {promised:g})"
        self.readouts["result"].setText(text)
        self.status.setText(f"Compared '{original.name}' with '{decoded_name}': {text}.")
        self.last_comparison = cmp
        show_info(f"MoEC compare: {text}")
