"""The dock widget end to end: a real napari viewer under Xvfb, real (tiny) training runs.

Each training run is a 32³ block of the bundled head CT at 32x with 4 experts for 40 steps of
4096 points: a few seconds on two idle CPU cores, and (seed 0) the router already splits the block
between two experts. Timeouts are generous because CI machines are shared.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

pytest.importorskip("napari")
pytest.importorskip("pytestqt")

from qtpy.QtWidgets import QApplication

import napari_moec
from napari_moec._napari import widget as _widget
from napari_moec._napari import widget_results as _widget_results
from napari_moec._napari import widget_single as _widget_single
from napari_moec._napari.layers import LABELS_OPACITY, layer_names
from napari_moec._napari.live_view import (
    CONTOUR_OPACITY,
    LABELS_CONTOUR,
    LiveFrame,
    LiveLayers,
    compose_frame,
    displayed_plane,
)
from napari_moec._napari.sample_data import CT_HEAD_SPACING, ct_head
from napari_moec._napari.widget import MoecWidget
from napari_moec._napari.widget_results import grid_of
from napari_moec._napari.widget_settings import WIDGET_DEFAULTS, SettingsPanel
from napari_moec.config import OPTION_CONFIGS, PreviewConfig, option_fields
from napari_moec.errors import TrainingError
from napari_moec.events import Preview, Progress, RegionPreview
from napari_moec.metrics import psnr

from ._latency import EventLoopProbe

pytestmark = pytest.mark.gui

BLOCK = (slice(30, 62), slice(16, 48), slice(16, 48))
NAMES = layer_names("block")


@pytest.fixture
def messages(monkeypatch):
    """Errors and infos the widget shows, instead of napari notifications."""
    seen: list[tuple[str, str]] = []
    for module in (_widget, _widget_results):
        monkeypatch.setattr(module, "show_error", lambda m: seen.append(("error", m)))
    monkeypatch.setattr(_widget_results, "show_info", lambda m: seen.append(("info", m)))
    return seen


@pytest.fixture
def viewer_widget(make_napari_viewer):
    """A viewer holding the 32³ block (mm scale) and the docked widget, set for tiny runs."""
    viewer = make_napari_viewer()
    viewer.add_image(ct_head()[BLOCK], name="block", scale=CT_HEAD_SPACING, translate=(3, 0, 0))
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.preview = PreviewConfig(every_steps=10)  # by steps: the same on any machine
    widget.settings.set_values(ratio=32, steps=40, num_experts=4, batch_size=4096, report_every=5)
    pair = [viewer, widget]
    yield pair
    # pytest keeps fixture values until the test item is torn down, after napari's leak check:
    # drop our references so that only napari's own fixture holds the viewer.
    pair.clear()


def _wait_done(qtbot, widget, timeout=120_000):
    """Wait for the worker's ``finished`` (the widget drops its worker reference there)."""
    qtbot.waitUntil(lambda: widget.worker is None, timeout=timeout)


def test_widget_opens_from_plugin_menu(make_napari_viewer):
    viewer = make_napari_viewer()
    dock, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    assert isinstance(widget, MoecWidget)
    assert dock.name == "MoEC compression (napari-moec)" or "MoEC" in dock.name
    assert widget.source.count() == 0
    assert "no image layer" in widget.settings.estimate.text()


def test_source_picker_follows_layer_list(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    items = lambda: [widget.source.itemText(i) for i in range(widget.source.count())]  # noqa: E731
    assert items() == ["block"]
    viewer.add_image(np.zeros((8, 8), np.uint16), name="flat")  # 2D: not offered
    viewer.add_image(np.ones((3, 8, 8, 8), np.float32), name="series")  # 4D: offered
    assert items() == ["block", "series"]
    viewer.layers["series"].name = "renamed"
    assert items() == ["block", "renamed"]
    viewer.layers.remove("renamed")
    assert items() == ["block"]


def test_estimate_shows_size_and_impossible_ratio(viewer_widget, qtbot):
    _, widget = viewer_widget
    widget.update_estimate()
    assert "B file" in widget.settings.estimate.text()
    assert "parameters" in widget.settings.estimate.text()
    widget.settings.set_values(ratio=100_000)
    widget.update_estimate()
    assert "highest possible ratio" in widget.settings.estimate.text()
    assert "B file" not in widget.settings.estimate.text()


def test_estimate_in_psnr_mode_sizes_the_model_training_uses(viewer_widget):
    """Under a PSNR target the ratio is only a ceiling, so the estimate must describe the
    model Compressor sizes with ``quality_target`` (its levels off the voxel lattice), not
    the one the ceiling alone would give."""
    from napari_moec.plan import plan

    _, widget = viewer_widget
    widget.settings.set_values(target_psnr=40.0)
    request = widget.request()
    kw = {"arch": request.arch, "quant": request.quant, **request.physical}
    sized = plan(request.shape, request.dtype, request.ratio, quality_target=True, **kw)
    ceiling = plan(request.shape, request.dtype, request.ratio, **kw)
    assert sized.num_parameters != ceiling.num_parameters  # the test can tell them apart
    widget.update_estimate()
    assert f"{sized.num_parameters:,} parameters" in widget.settings.estimate.text()


def test_the_widget_starts_with_the_router_on(viewer_widget):
    """The plugin is for watching the learned partition: it starts on the grid family with 4
    experts and the family's "auto" top-k (top-2 for a routed grid model), unlike the
    library's one-network default, and its estimate says so."""
    _, widget = viewer_widget
    arch = widget.settings.compressor_kwargs()["arch"]
    assert (arch.model, arch.num_experts, arch.top_k) == ("grid", 4, None)
    widget.update_estimate()
    assert "grid · width" in widget.settings.estimate.text()
    assert "× 4 experts, top-2" in widget.settings.estimate.text()
    widget.settings.set_values(top_k=1)
    widget.update_estimate()
    assert "× 4 experts, top-1" in widget.settings.estimate.text()


def test_auto_experts_follow_the_budget(viewer_widget):
    """Experts "auto" (ticked, the control hidden) is the core's choice: one network without
    a router where it is wide, 2 experts where it would be narrow, 1 at tiny budgets."""
    _, widget = viewer_widget
    # SIREN's auto rule (the widget starts on the grid family with 4 experts)
    widget.settings.set_values(model="siren", num_experts=None, ratio=32)  # 2048 B, 32³ block
    experts = widget.settings.controls["num_experts"]
    assert experts.auto.value and not experts.control.visible
    assert widget.settings.compressor_kwargs()["arch"].num_experts is None
    widget.update_estimate()
    assert "width 25 · one network, no router" in widget.settings.estimate.text()
    widget.settings.set_values(ratio=64)
    widget.update_estimate()
    assert "width 11 × 2 experts" in widget.settings.estimate.text()
    widget.settings.set_values(ratio=400)  # 163 bytes: too few for two experts of width 4
    widget.update_estimate()
    assert "· one network, no router" in widget.settings.estimate.text()


def test_training_streams_layers_then_saves_and_compares(viewer_widget, qtbot, tmp_path, messages):
    viewer, widget = viewer_widget
    frames: list = []
    widget.start()
    widget.worker.yielded.connect(lambda e: frames.append(e) if isinstance(e, LiveFrame) else None)
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    assert NAMES.image in viewer.layers and NAMES.labels in viewer.layers  # made on the click
    _wait_done(qtbot, widget)
    assert [f for f in frames if not f.final], "no live preview arrived"
    assert frames[-1].final
    image, labels = viewer.layers[NAMES.image], viewer.layers[NAMES.labels]
    assert image.data.shape == (32, 32, 32)
    assert len(np.unique(labels.data)) >= 2, "the partition should use at least two experts"
    np.testing.assert_allclose(image.scale, CT_HEAD_SPACING)
    np.testing.assert_allclose(image.translate, (3, 0, 0))
    assert labels.metadata["moec_experts"] == 4 and labels.metadata["moec_ratio"] >= 32
    assert widget.start_button.isEnabled() and widget.save_button.isEnabled()
    assert "PSNR" in widget.readouts["result"].text()

    path = widget.save(tmp_path / "block")
    assert path.name == "block.moec" and path.stat().st_size <= 32**3 * 2 / 32
    reference = napari_moec.load(path).decode()
    np.testing.assert_array_equal(image.data, reference)

    widget.compare()
    qtbot.waitUntil(lambda: widget.compare_worker is None, timeout=60_000)
    assert NAMES.difference in viewer.layers
    assert grid_of(viewer).enabled
    assert not viewer.layers[NAMES.labels].visible
    expected = psnr(ct_head()[BLOCK], reference)
    assert widget.last_comparison.psnr == pytest.approx(expected)
    assert not [m for kind, m in messages if kind == "error"]


def test_gui_stays_responsive_during_training(viewer_widget, qtbot):
    """The event loop must never stall > 100 ms because of training (measured with a timer).

    From the end of the Start click until the worker has finished (worker start-up, 300
    training steps with a preview every 10, rate control, the final decode) every gap between
    10 ms ticks, and the one from the last tick to the end, less the GUI thread's wait for a
    core (the OS's share of a busy machine, ``tests/_latency.py``), must stay under 100 ms.
    The run is fixed in steps, not seconds, and no number of ticks is required: on a fast
    machine the run is short and has few gaps, on a slow one many, and the bound holds for
    each. The click itself is measured and printed but not bounded: it creates the two live
    layers, and napari's own work for a new layer (Qt controls, vispy visuals) takes 0.3-0.9 s
    under software GL on a busy 2-core machine even after the widget's warm-up.
    """
    _, widget = viewer_widget
    widget.settings.set_values(steps=300)
    steps: list[int] = []
    probe = EventLoopProbe()
    t0 = time.perf_counter()
    widget.start()
    widget.worker.yielded.connect(
        lambda event: steps.append(event.step) if isinstance(event, Progress) else None
    )
    QApplication.processEvents()  # the click's layer creation and first layout
    click = time.perf_counter() - t0
    probe.start()
    _wait_done(qtbot, widget)
    probe.stop()
    assert steps and steps[-1] == 300, f"training did not run to the end: {steps[-3:]}"
    print(f"Start click {click * 1000:.0f} ms; gaps > 50 ms (s, ms, CPU ms, queued ms): "
          f"{probe.slow()}")  # fmt: skip
    probe.assert_responsive()


def test_live_layers_copy_frames_in_place(make_napari_viewer):
    """Same-shape frames are copied into the layers' own arrays (no napari re-setup); frames
    are never written to; another shape is assigned. The partition is outlined in 2D view."""
    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((4, 6, 8), np.uint16), name="v", scale=(2, 1, 1))
    live = LiveLayers(viewer, source)
    live.prepare((4, 6, 8), np.uint16)
    names = layer_names("v")
    image, labels = viewer.layers[names.image], viewer.layers[names.labels]
    np.testing.assert_allclose(image.scale, (2, 1, 1))
    assert labels.contour == LABELS_CONTOUR
    buffers = image.data, labels.data
    first = LiveFrame(1, np.full((4, 6, 8), 7, np.uint16), np.full((4, 6, 8), 2, np.uint8))
    live.show(first)
    assert image.data is buffers[0] and labels.data is buffers[1]
    assert (image.data == 7).all() and (labels.data == 2).all()
    live.show(LiveFrame(2, np.full((4, 6, 8), 9, np.uint16), np.ones((4, 6, 8), np.uint8)))
    assert (first.image == 7).all() and (image.data == 9).all() and (labels.data == 1).all()
    bigger = LiveFrame(3, np.full((8, 12, 16), 5, np.uint16), np.ones((8, 12, 16), np.uint8))
    live.show(bigger)
    assert image.data.shape == (8, 12, 16) and (image.data == 5).all()
    live.show(LiveFrame(4, np.zeros((8, 12, 16), np.uint16), np.ones((8, 12, 16), np.uint8)))
    assert (bigger.image == 5).all()
    viewer.dims.ndisplay = 3  # napari draws no contours in 3D: a light fill there
    assert labels.contour == 0 and labels.opacity == LABELS_OPACITY
    viewer.dims.ndisplay = 2
    assert labels.contour == LABELS_CONTOUR and labels.opacity == CONTOUR_OPACITY


def test_displayed_plane_follows_the_view(make_napari_viewer):
    """The plane napari shows, in the layer's voxels: the current slice of the non-displayed
    axes, whole displayed axes (or a window around the camera for huge planes), none in 3D."""
    viewer = make_napari_viewer()
    layer = viewer.add_image(np.zeros((10, 20, 30), np.uint8), scale=(2, 1, 1), translate=(4, 0, 0))
    viewer.dims.set_point(0, 4 + 2 * 7)  # world z of voxel 7
    assert displayed_plane(viewer, layer, 10**6) == (slice(7, 8), slice(0, 20), slice(0, 30))
    viewer.dims.order = (2, 0, 1)  # now showing (z, y) at an x
    viewer.dims.set_point(2, 12)
    assert displayed_plane(viewer, layer, 10**6) == (slice(0, 10), slice(0, 20), slice(12, 13))
    viewer.dims.order = (0, 1, 2)
    roi = displayed_plane(viewer, layer, 150)  # 20 x 30 > 150: a window, centred on the view
    assert roi[0] == slice(7, 8)
    height, width = roi[1].stop - roi[1].start, roi[2].stop - roi[2].start
    assert height * width <= 150 and width / height == pytest.approx(1.5, rel=0.25)
    assert roi[1].stop <= 20 and roi[2].stop <= 30  # starts are clipped at 0 too
    viewer.dims.ndisplay = 3
    assert displayed_plane(viewer, layer, 10**6) is None


def test_compose_frame_upsamples_and_overlays_regions():
    """Strided samples fill their nearest voxels; full-resolution regions replace them."""
    grid = np.arange(2 * 3, dtype=np.uint16).reshape(1, 2, 3)  # samples at y 0,2 and x 0,2,4
    region = RegionPreview(
        (slice(0, 1), slice(1, 2), slice(0, 5)),
        np.full((1, 1, 5), 99, np.uint16),
        np.ones((1, 1, 5)),
    )
    preview = Preview(1, (1, 2, 2), grid, np.zeros(grid.shape, np.uint8), (region,))
    frame = compose_frame(preview, (1, 4, 5))
    assert frame.image.shape == (1, 4, 5) and frame.labels.dtype == np.uint8
    np.testing.assert_array_equal(frame.image[0, 0], [0, 1, 1, 2, 2])  # x 1 -> sample x 2
    np.testing.assert_array_equal(frame.image[0, 1], 99)  # the region
    np.testing.assert_array_equal(frame.image[0, 2], [3, 4, 4, 5, 5])
    np.testing.assert_array_equal(frame.image[0, 3], [3, 4, 4, 5, 5])  # past the last sample
    np.testing.assert_array_equal(frame.labels[0, 1], 2)  # expert 1 shown as label 2
    np.testing.assert_array_equal(frame.labels[0, 0], 1)
    assert frame.regions == (region.roi,) and (grid == np.arange(6).reshape(1, 2, 3)).all()


def test_changing_the_slice_sharpens_the_new_plane(viewer_widget, qtbot):
    """During training the plane shown is decoded at full resolution; after the user moves the
    slice, a later preview decodes the new plane and the live layer shows it."""
    viewer, widget = viewer_widget
    widget.preview = PreviewConfig(every_steps=5, voxels=4096)  # a 2x-strided preview
    widget.settings.set_values(steps=100_000)
    frames: list = []
    viewer.dims.set_point(0, 3 + CT_HEAD_SPACING[0] * 4)  # voxel 4 of the block
    widget.start()
    widget.worker.yielded.connect(lambda e: frames.append(e) if isinstance(e, LiveFrame) else None)
    plane = lambda z: (slice(z, z + 1), slice(0, 32), slice(0, 32))  # noqa: E731
    qtbot.waitUntil(lambda: any(plane(4) in f.regions for f in frames), timeout=60_000)
    viewer.dims.set_point(0, 3 + CT_HEAD_SPACING[0] * 20)
    qtbot.waitUntil(lambda: any(plane(20) in f.regions for f in frames), timeout=60_000)
    # The widget's slot runs before this test's (connected first): it shows the latest frame.
    np.testing.assert_array_equal(widget.run.live.image_layer.data, frames[-1].image)
    frame = next(f for f in frames if plane(20) in f.regions)
    worker = widget.worker
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        widget.stop()
    assert frame.image.shape == (32, 32, 32)
    assert plane(4) not in frame.regions  # only what is shown now
    assert len(np.unique(frame.image[21])) <= 16 * 16  # not shown: the 2x preview, upsampled
    assert widget.result.compressed.report.stopped_early


def test_pause_resume_stop_keeps_best_model(viewer_widget, qtbot, tmp_path):
    _, widget = viewer_widget
    widget.settings.set_values(steps=100_000)
    steps: list[int] = []
    widget.start()
    widget.worker.yielded.connect(lambda e: steps.append(getattr(e, "step", 0)))
    qtbot.waitUntil(lambda: len(steps) > 20, timeout=30_000)
    with qtbot.waitSignal(widget.worker.paused, timeout=5_000):
        widget.pause_button.click()
    paused_at = len(steps)
    qtbot.wait(300)
    assert len(steps) == paused_at, "training went on while paused"
    with qtbot.waitSignal(widget.worker.resumed, timeout=5_000):
        widget.pause_button.click()
    qtbot.waitUntil(lambda: len(steps) > paused_at + 5, timeout=10_000)
    worker = widget.worker
    with qtbot.waitSignal(worker.finished, timeout=60_000):
        widget.stop_button.click()
    assert widget.worker is None and widget.start_button.isEnabled()
    compressed = widget.result.compressed
    assert compressed.report.stopped_early and compressed.report.steps < 100_000
    assert widget.save(tmp_path / "stopped.moec").exists()


def test_closing_the_viewer_stops_the_worker(make_napari_viewer, qtbot):
    viewer = make_napari_viewer()
    viewer.add_image(ct_head()[BLOCK], name="block")
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.settings.set_values(ratio=64, steps=100_000, batch_size=4096)
    widget.start()
    worker = widget.worker
    qtbot.waitUntil(lambda: worker.is_running, timeout=10_000)
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        viewer.close()


def test_removing_the_dock_widget_stops_the_worker(viewer_widget, qtbot):
    viewer, widget = viewer_widget
    widget.settings.set_values(steps=100_000)
    widget.start()
    worker = widget.worker
    with qtbot.waitSignal(worker.finished, timeout=20_000):
        viewer.window.remove_dock_widget(widget)
    widget.deleteLater()


@pytest.mark.parametrize(
    ("layer", "expected"),
    [
        (None, "no image layer"),
        (np.zeros((16, 16), np.uint16), "2D"),
        (np.zeros((16, 16, 3), np.uint8), "RGB"),
    ],
    ids=["no-layer", "2d", "rgb"],
)
def test_unusable_source_shows_a_message(make_napari_viewer, messages, layer, expected):
    viewer = make_napari_viewer()
    if layer is not None:
        viewer.add_image(layer, name="bad")
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.start()
    assert widget.worker is None and widget.start_button.isEnabled()
    (kind, message), *_ = messages
    assert kind == "error" and expected in message


def test_training_error_becomes_a_message(viewer_widget, qtbot, messages, monkeypatch):
    """A NaN loss (TrainingError) is shown, the buttons come back, earlier layers stay."""
    viewer, widget = viewer_widget

    def failing_run(self):
        yield from ()
        raise TrainingError("loss became nan at step 3; try a lower lr (now 0.002)")

    monkeypatch.setattr(_widget_single.Compressor, "run", failing_run)
    widget.start()
    _wait_done(qtbot, widget, timeout=10_000)
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert "block" in viewer.layers
    errors = [m for kind, m in messages if kind == "error"]
    assert errors and "training failed" in errors[0] and "nan" in errors[0]


def test_load_decodes_in_a_worker(viewer_widget, qtbot, tmp_path, messages):
    """Load… returns at once with a worker; the layers and the result come when it returns.
    A broken file becomes a message naming it."""
    viewer, widget = viewer_widget
    compressed = napari_moec.compress(
        ct_head()[BLOCK], 32, spacing=CT_HEAD_SPACING, steps=5, batch_size=1024
    )
    path = compressed.save(tmp_path / "loaded.moec")
    assert widget.load(path) is not None and not widget.load_button.isEnabled()
    # Not waitSignal(worker.finished): the worker may finish before a slot is connected.
    qtbot.waitUntil(lambda: widget.load_worker is None, timeout=60_000)
    names = layer_names("loaded")
    assert names.image in viewer.layers and names.labels in viewer.layers
    np.testing.assert_array_equal(viewer.layers[names.image].data, compressed.decode())
    np.testing.assert_array_equal(widget.result.labels, compressed.expert_labels())
    assert widget.load_button.isEnabled() and widget.save_button.isEnabled()
    assert "PSNR" in widget.readouts["result"].text()

    broken = tmp_path / "broken.moec"
    broken.write_bytes(path.read_bytes()[:40])
    assert widget.load(broken) is not None
    qtbot.waitUntil(lambda: widget.load_worker is None, timeout=60_000)
    errors = [m for kind, m in messages if kind == "error"]
    assert errors and "broken.moec" in errors[0]


def test_settings_are_built_from_the_option_declarations(qtbot):
    """One control per option with a ui place, with the declared default, range and help;
    untouched, the panel gives the dataclasses' defaults."""
    panel = SettingsPanel()
    qtbot.addWidget(panel)
    shown = {
        f.name: f
        for cls in OPTION_CONFIGS.values()
        for f in option_fields(cls)
        if f.metadata["option"]["ui"] is not None
    }
    assert set(panel.controls) == set(shown)
    for name, f in shown.items():
        meta, control = f.metadata["option"], panel.controls[name]
        assert control.value == WIDGET_DEFAULTS.get(name, f.default), name
        assert meta["help"] in control.control.tooltip, name
        if meta["lo"] is not None and meta["choices"] is None:
            assert control.control.min >= meta["lo"], name
    kwargs = panel.compressor_kwargs()
    assert kwargs["ratio"] == 256.0
    assert {key: kwargs[key] for key in OPTION_CONFIGS} == {
        key: cls(**{k: v for k, v in WIDGET_DEFAULTS.items() if k in cls.__dataclass_fields__})
        for key, cls in OPTION_CONFIGS.items()
    }
    panel.set_values(num_experts=3, precision="fp16", report_every=7)
    kwargs = panel.compressor_kwargs()
    assert kwargs["arch"].num_experts == 3 and kwargs["quant"].precision == "fp16"
    assert kwargs["train"].report_every == 7  # no control: kept as an override
    with pytest.raises(AttributeError):
        panel.set_values(no_such_option=1)
