"""How long napari's event loop stalls while the dock widget trains (GUI responsiveness).

Opens a napari viewer (hidden by default, ``--show`` for a visible window: then every repaint
runs through the OpenGL stack, which under Xvfb is software rendering), docks the MoEC widget
on a 32³ block of the bundled head CT, presses Start and ticks a 10 ms QTimer on the GUI thread
until the worker has finished. Each gap between ticks is how long the event loop was busy.

When a tick is late by more than ``--dump-after`` seconds, a C-level watchdog
(``faulthandler.dump_traceback_later``, re-armed by every tick) writes the Python stack of every
thread to ``--stacks`` without needing the GIL: that is how the rate controller's GIL-holding
table builds were found to stall the GUI at the end of a run.

    xvfb-run -a python benchmarks/gui_latency.py --steps 300 --out docs/benchmarks/data/gui
    xvfb-run -a python benchmarks/gui_latency.py --steps 300 --show --out docs/benchmarks/data/gui

``--lazy`` gives the widget the block as a dask array instead: a lazy layer, which it compresses
tile by tile on a local Dask cluster (``--tile``, ``--workers``; ``--steps`` per tile), the live
layers reading the store as tiles land:

    xvfb-run -a python benchmarks/gui_latency.py --lazy --steps 100 --show \
        --out docs/benchmarks/data/gui
"""

from __future__ import annotations

import argparse
import faulthandler
import os
import time
from pathlib import Path

import numpy as np

from _common import provenance, write_json

BLOCK = (slice(30, 62), slice(16, 48), slice(16, 48))


def _by_gap(item: tuple[float, int]) -> int:
    return -item[1]


def measure(args: argparse.Namespace) -> dict:
    import napari
    from napari._qt.qt_main_window import _QtMainWindow
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_moec._napari.sample_data import CT_HEAD_SPACING, ct_head
    from napari_moec.config import PreviewConfig

    stacks = open(args.stacks, "w")  # noqa: SIM115 (the watchdog writes to it until the end)
    slow_paints: list[tuple[float, float]] = []
    original_event = _QtMainWindow.event
    t0 = [time.perf_counter()]

    def timed_event(self, event):  # repaints of the whole window (QEvent.UpdateRequest)
        start = time.perf_counter()
        result = original_event(self, event)
        took = time.perf_counter() - start
        if took > 0.03:
            slow_paints.append((round(start - t0[0], 3), round(took * 1000, 1)))
        return result

    _QtMainWindow.event = timed_event
    viewer = napari.Viewer(show=args.show)
    block = ct_head()[BLOCK]
    if args.lazy:
        import dask.array as da

        limits = (float(block.min()), float(block.max()))
        data = da.from_array(block, chunks=args.tile)
        viewer.add_image(data, name="block", scale=CT_HEAD_SPACING, contrast_limits=limits)
    else:
        viewer.add_image(block, name="block", scale=CT_HEAD_SPACING)
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.preview = PreviewConfig(
        every_steps=args.preview_steps, every_seconds=args.preview_every
    )  # each preview also decodes the plane shown at full resolution (the live view)
    widget.settings.set_values(
        ratio=32, steps=args.steps, num_experts=4, batch_size=4096, report_every=5
    )
    if args.lazy:  # 8 tiles of 16³: at 32x the store's metadata would leave them no bytes
        widget.settings.set_values(ratio=8, tile=args.tile, workers=args.workers)
    for _ in range(50):  # let the window settle
        QApplication.processEvents()
        time.sleep(0.01)

    gaps: list[tuple[float, float]] = []  # (seconds since Start, gap seconds)
    last = [0.0]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append((now - t0[0], now - last[0]))
        if now - last[0] > args.dump_after:
            stacks.write(f"### gap {1000 * (now - last[0]):.0f} ms ending {now - t0[0]:.2f} s\n")
            stacks.flush()
        last[0] = now
        faulthandler.dump_traceback_later(args.dump_after, file=stacks)

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    t0[0] = time.perf_counter()
    widget.start()
    QApplication.processEvents()
    click = time.perf_counter() - t0[0]
    last[0] = time.perf_counter()
    timer.start()
    while widget.worker is not None:
        QApplication.processEvents()
        time.sleep(0.002)
    timer.stop()
    faulthandler.cancel_dump_traceback_later()
    stacks.close()
    _QtMainWindow.event = original_event
    ms = np.array([g for _, g in gaps]) * 1000
    result = widget.result
    report = getattr(result, "report", None) if args.lazy else None
    if not args.lazy and result is not None:
        report = result.compressed.report
    viewer.close()
    return {
        "show": args.show,
        "lazy": args.lazy,
        "tile": args.tile if args.lazy else None,
        "workers": args.workers if args.lazy else None,
        "tiles": getattr(report, "total_tiles", None) if args.lazy else None,
        "steps": args.steps,
        "preview_every": args.preview_every,
        "preview_steps": args.preview_steps,
        "start_click_ms": round(click * 1000, 1),
        "ticks": len(ms),
        "gap_ms": {
            "p50": round(float(np.percentile(ms, 50)), 1),
            "p99": round(float(np.percentile(ms, 99)), 1),
            "max": round(float(ms.max()), 1),
            "over_50": int((ms > 50).sum()),
            "over_100": int((ms > 100).sum()),
        },
        "worst_gaps": sorted(((round(t, 2), round(g * 1000)) for t, g in gaps), key=_by_gap)[:10],
        "slow_window_events_ms": slow_paints[:50],
        "training_seconds": None if report is None else report.seconds,
        "stacks_file": str(args.stacks),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--show", action="store_true", help="a visible window (repaints)")
    parser.add_argument("--lazy", action="store_true", help="a dask layer: a tiled run on Dask")
    parser.add_argument("--tile", type=int, default=16, help="--lazy: tile edge")
    parser.add_argument("--workers", type=int, default=2, help="--lazy: local Dask workers")
    parser.add_argument("--preview-every", type=float, default=1.0, help="seconds")
    parser.add_argument("--preview-steps", type=int, default=50, help="optimiser steps")
    parser.add_argument("--dump-after", type=float, default=0.06, help="seconds")
    parser.add_argument("--stacks", type=Path, default=Path("benchmarks/out/gui_stacks.txt"))
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gui"))
    args = parser.parse_args()
    args.stacks.parent.mkdir(parents=True, exist_ok=True)
    record = {**measure(args), **provenance("cpu")}
    kind = "lazy_" if args.lazy else ""
    name = f"gui_latency_{kind}{'shown' if args.show else 'hidden'}_{args.steps}steps.json"
    write_json(args.out / name, record)
    g = record["gap_ms"]
    print(
        f"{'shown' if args.show else 'hidden'} window, {args.steps} steps: Start click "
        f"{record['start_click_ms']:.0f} ms; event-loop gaps p50 {g['p50']} ms, p99 {g['p99']} ms, "
        f"max {g['max']} ms, {g['over_100']} over 100 ms  -> {args.out / name}"
    )
    os._exit(0)  # skip Qt/napari teardown at interpreter exit: nothing left to save


if __name__ == "__main__":
    main()
