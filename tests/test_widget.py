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

from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

import napari_moec
from napari_moec import _widget, _widget_results
from napari_moec._layers import LiveLayers
from napari_moec._sample_data import CT_HEAD_SPACING, ct_head
from napari_moec._widget import MoecWidget
from napari_moec._widget_results import grid_of
from napari_moec.config import PreviewConfig
from napari_moec.errors import TrainingError
from napari_moec.events import Progress
from napari_moec.metrics import psnr

pytestmark = pytest.mark.gui

BLOCK = (slice(30, 62), slice(16, 48), slice(16, 48))


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
    widget.settings.set_values(ratio=32, steps=40, experts=4, batch_size=4096, report_every=5)
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


def test_auto_experts_follow_the_budget(viewer_widget):
    """Experts "auto" (the spin box's 0) is the core's choice: 2 experts, 1 at tiny budgets."""
    _, widget = viewer_widget
    widget.settings.set_values(experts=0, ratio=32)
    assert widget.settings.experts.text() == "auto"
    assert widget.settings.compressor_kwargs()["arch"].num_experts is None
    widget.update_estimate()
    assert "× 2 experts" in widget.settings.estimate.text()
    widget.settings.set_values(ratio=400)  # 163 bytes for the 32³ block
    widget.update_estimate()
    assert "× 1 experts" in widget.settings.estimate.text()


def test_training_streams_layers_then_saves_and_compares(viewer_widget, qtbot, tmp_path, messages):
    viewer, widget = viewer_widget
    previews: list = []
    widget.start()
    widget.worker.yielded.connect(
        lambda e: previews.append(e) if type(e).__name__ == "Preview" else None
    )
    assert not widget.start_button.isEnabled() and widget.stop_button.isEnabled()
    qtbot.waitUntil(
        lambda: "block MoEC" in viewer.layers and "block experts" in viewer.layers, timeout=60_000
    )
    _wait_done(qtbot, widget)
    assert previews, "no live preview arrived"
    image, labels = viewer.layers["block MoEC"], viewer.layers["block experts"]
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
    assert "block difference" in viewer.layers
    assert grid_of(viewer).enabled
    assert not viewer.layers["block experts"].visible
    expected = psnr(ct_head()[BLOCK], reference)
    assert widget.last_comparison.psnr == pytest.approx(expected)
    assert not [m for kind, m in messages if kind == "error"]


def test_gui_stays_responsive_during_training(viewer_widget, qtbot):
    """The event loop must never stall > 100 ms because of training (measured with a timer).

    From the end of the Start click until the worker has finished (worker start-up, 300
    training steps with a preview every 10, rate control, the final decode) every gap between
    10 ms ticks, and the one from the last tick to the end, must stay under 100 ms. The run is
    fixed in steps, not seconds, and no number of ticks is required: on a fast machine the run
    is short and has few gaps, on a slow one many, and the bound holds for each. The click
    itself is measured and printed but not bounded: it creates the two live layers, and
    napari's own work for a new layer (Qt controls, vispy visuals) takes 0.3-0.9 s under
    software GL on a busy 2-core machine even after the widget's warm-up.
    """
    _, widget = viewer_widget
    widget.settings.set_values(steps=300)
    gaps: list[float] = []
    cpu: list[float] = []  # CPU seconds the whole process got during each gap (all threads)
    last = [time.perf_counter(), time.process_time()]

    def tick():
        now, used = time.perf_counter(), time.process_time()
        gaps.append(now - last[0])
        cpu.append(used - last[1])
        last[:] = [now, used]

    steps: list[int] = []
    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    t0 = time.perf_counter()
    widget.start()
    widget.worker.yielded.connect(
        lambda event: steps.append(event.step) if isinstance(event, Progress) else None
    )
    QApplication.processEvents()  # the click's layer creation and first layout
    click = time.perf_counter() - t0
    timer.start()
    last[:] = [time.perf_counter(), time.process_time()]
    _wait_done(qtbot, widget)
    timer.stop()
    tick()  # the gap from the last tick to the end of the run counts too
    assert steps and steps[-1] == 300, f"training did not run to the end: {steps[-3:]}"
    # (s, gap ms, process CPU ms): a long gap in which the process got almost no CPU means the
    # machine did not run it (overload), not that the plugin blocked the loop.
    slow = [
        (round(sum(gaps[:i]), 2), round(g * 1000), round(c * 1000))
        for i, (g, c) in enumerate(zip(gaps, cpu, strict=True))
        if g > 0.05
    ]
    print(f"Start click {click * 1000:.0f} ms; gaps > 50 ms at (s, ms, CPU ms): {slow}")
    worst = max(range(len(gaps)), key=gaps.__getitem__)
    assert gaps[worst] < 0.100, (
        f"event loop blocked for {gaps[worst] * 1000:.0f} ms "
        f"(the process got {cpu[worst] * 1000:.0f} ms of CPU meanwhile)"
    )


def test_live_layers_swap_previews_in_place(make_napari_viewer):
    """Same-shape previews are copied into the layers' own arrays (no napari re-setup); arrays
    handed in are never written to; another shape is assigned."""
    viewer = make_napari_viewer()
    source = viewer.add_image(np.zeros((4, 6, 8), np.uint16), name="v")
    live = LiveLayers(viewer, source)
    live.prepare((4, 6, 8), (1, 1, 1), np.uint16)
    image, labels = viewer.layers["v MoEC"], viewer.layers["v experts"]
    buffers = image.data, labels.data
    first = np.full((4, 6, 8), 7, np.uint16)
    live.update(first, np.ones((4, 6, 8), np.int64), (1, 1, 1))
    assert image.data is buffers[0] and labels.data is buffers[1]
    assert (image.data == 7).all() and (labels.data == 2).all()  # expert 1 shown as label 2
    live.update(np.full((4, 6, 8), 9, np.uint16), np.zeros((4, 6, 8), np.int64), (1, 1, 1))
    assert (first == 7).all() and (image.data == 9).all() and (labels.data == 1).all()
    final = np.full((8, 12, 16), 5, np.uint16)
    live.update(final, np.zeros(final.shape, np.int64), (1, 1, 1))
    assert image.data.shape == final.shape and (image.data == 5).all()
    live.update(np.zeros(final.shape, np.uint16), np.zeros(final.shape, np.int64), (1, 1, 1))
    assert (final == 5).all()


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

    monkeypatch.setattr(_widget.Compressor, "run", failing_run)
    widget.start()
    _wait_done(qtbot, widget, timeout=10_000)
    assert widget.start_button.isEnabled() and not widget.stop_button.isEnabled()
    assert "block" in viewer.layers
    errors = [m for kind, m in messages if kind == "error"]
    assert errors and "training failed" in errors[0] and "nan" in errors[0]
