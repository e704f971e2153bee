"""Results half of the dock widget: Save…, Load… and Compare.

A mixin of :class:`~napari_moec._widget.MoecWidget` so the widget module stays readable; it uses
the widget's ``viewer``, ``result``, ``readouts`` and ``source_layer()``. Load… and Compare run
in napari workers (decoding and SSIM take seconds); their results come back to the GUI thread,
which only adds or updates layers.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from napari.qt.threading import create_worker
from napari.utils.notifications import show_error, show_info
from qtpy.QtWidgets import QFileDialog

from ._layers import layer_names, moec_metadata
from ._widget_run import Comparison, Loaded, describe_error, measure, open_moec
from .compressed import Compressed

__all__ = ["ResultsMixin"]


def grid_of(viewer):
    """Grid settings: ``viewer.canvas.grid`` since napari 0.9, ``viewer.grid`` before."""
    canvas = getattr(viewer, "canvas", None)
    return canvas.grid if canvas is not None and hasattr(canvas, "grid") else viewer.grid


class ResultsMixin:
    """Save, load and compare the widget's current result (``self.result``, an Outcome)."""

    def _show_result(self, compressed: Compressed, name: str) -> None:
        """Readouts, layer metadata and a notification for a finished or loaded volume."""
        meta = moec_metadata(compressed)
        psnr, ssim = meta["moec_psnr"], meta["moec_ssim"]
        quality = f"PSNR {psnr:.2f} dB" if psnr is not None else "PSNR unknown"
        if ssim is not None:
            quality += f", SSIM {ssim:.3f}"
        text = f"{compressed.nbytes:,} B, {compressed.ratio:.0f}x, {quality}"
        self._result_name = name
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
        """Write the current result as a ``.moec`` file (atomic: a failed save changes nothing).

        Parameters
        ----------
        path
            Target file; None asks with a file dialog. ``.moec`` is appended when missing.
        """
        if self.result is None:
            show_error("MoEC: nothing to save yet. Train (Start) or Load… a volume first.")
            return None
        if path is None:
            suggested = f"{getattr(self, '_result_name', 'volume')}.moec"
            path, _ = QFileDialog.getSaveFileName(self, "Save .moec", suggested, "MoEC (*.moec)")
            if not path:
                return None
        path = Path(path)
        if path.suffix.lower() != ".moec":
            path = path.with_name(path.name + ".moec")
        try:
            self.result.compressed.save(path)
        except OSError as exc:
            show_error(f"MoEC: could not save {path}: {exc}")
            return None
        c = self.result.compressed
        show_info(f"Saved {path.name}: {c.nbytes:,} bytes, {c.ratio:.0f}x.")
        return path

    def load(self, path: str | Path | None = None):
        """Open a ``.moec`` file with the plugin's reader, in a worker, and make it the current
        result; the layers appear when the worker returns. Returns the worker (None when no
        file was chosen or a load is already running)."""
        if self.load_worker is not None:
            return None
        if path is None:
            path, _ = QFileDialog.getOpenFileName(self, "Open .moec", "", "MoEC (*.moec)")
            if not path:
                return None
        worker = create_worker(open_moec, str(path), _start_thread=False, _ignore_errors=True)
        worker.returned.connect(self._on_loaded)
        worker.errored.connect(self._on_load_error)
        worker.finished.connect(self._on_load_finished)
        self.load_worker = worker
        self._loading_path = str(path)
        self.status.setText(f"Opening {Path(path).name}…")
        self._set_running(False)
        worker.start()
        return worker

    def _on_loaded(self, loaded: Loaded) -> None:
        for data, meta, kind in loaded.layer_data:
            getattr(self.viewer, f"add_{kind}")(data, **meta)
        self.result = loaded.outcome
        self._show_result(loaded.outcome.compressed, Path(loaded.path).name.removesuffix(".moec"))

    def _on_load_error(self, exc: BaseException) -> None:
        cause = exc.__cause__ if exc.__cause__ is not None else exc
        message = f"MoEC: could not open {self._loading_path}: {cause}"
        self.status.setText(message)
        show_error(message)

    def _on_load_finished(self) -> None:
        self.load_worker = None
        self._set_running(False)

    def compare(self) -> None:
        """PSNR/SSIM, a difference layer and a grid view of original vs decompressed."""
        original = self.source_layer()
        if self.result is None:
            show_error("MoEC: nothing to compare yet. Train (Start) or Load… a volume first.")
            return
        decoded = self.result.image
        if original is None or tuple(original.data.shape) != decoded.shape:
            show_error(
                f"MoEC: choose the original volume (shape {decoded.shape}) as Source to compare."
            )
            return
        self.compare_button.setEnabled(False)
        self.status.setText("Comparing…")
        worker = create_worker(
            measure, np.asarray(original.data), decoded, _start_thread=False, _ignore_errors=True
        )
        self._compare_original = original
        worker.returned.connect(self._show_comparison)
        worker.errored.connect(self._on_compare_error)
        worker.finished.connect(self._on_compare_finished)
        self.compare_worker = worker
        worker.start()

    def _save_clicked(self) -> None:
        self.save()

    def _load_clicked(self) -> None:
        self.load()

    def _on_compare_error(self, exc: BaseException) -> None:
        show_error(describe_error(exc))

    def _on_compare_finished(self) -> None:
        self.compare_worker = None
        self._compare_original = None
        self.compare_button.setEnabled(self.result is not None)

    def _show_comparison(self, cmp: Comparison) -> None:
        original = self._compare_original
        names = layer_names(getattr(self, "_result_name", original.name))
        decoded_name, diff_name = names.image, names.difference
        layers = {layer.name: layer for layer in self.viewer.layers}
        common = {
            "scale": tuple(original.scale),
            "translate": tuple(original.translate),
            "units": tuple(original.units),
        }
        if decoded_name not in layers:
            self.viewer.add_image(
                self.result.image,
                name=decoded_name,
                contrast_limits=tuple(original.contrast_limits),
                **common,
            )
        bound = float(np.abs(cmp.difference).max()) or 1.0
        if diff_name in layers:
            layers[diff_name].data = cmp.difference
            layers[diff_name].contrast_limits = (-bound, bound)
        else:
            self.viewer.add_image(
                cmp.difference,
                name=diff_name,
                colormap="PiYG",
                contrast_limits=(-bound, bound),
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
        self.readouts["result"].setText(text)
        self.status.setText(f"Compared '{original.name}' with '{decoded_name}': {text}.")
        self.last_comparison = cmp
        show_info(f"MoEC compare: {text}")
