"""Open napari with the bundled head CT loaded and the MoEC widget docked.

Run ``python -m napari_moec.demo`` (add ``--autostart`` to start compressing at once). The
screenshot options drive the documentation images headlessly, e.g. under ``xvfb-run``::

    python -m napari_moec.demo --autostart --steps 2000 --screenshot-step 800 \\
        --screenshot docs/images/widget-training.png
    python -m napari_moec.demo --autostart --steps 400 \\
        --compare-screenshot docs/images/widget-compare.png

A training screenshot is taken at a step (the first live preview at or after
``--screenshot-step``), so it shows the same stage of training on any machine; ``--quit-after``
takes it after a number of seconds instead.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m napari_moec.demo", description=__doc__.split("\n")[0]
    )
    p.add_argument("--autostart", action="store_true", help="press Start once the window is up")
    p.add_argument("--ratio", type=float, default=64.0, help="target ratio (default 64)")
    p.add_argument("--steps", type=int, default=1000, help="training steps (default 1000)")
    p.add_argument(
        "--experts", type=int, default=None, help="number of experts (default: the widget's, 4)"
    )
    p.add_argument("--batch-size", type=int, default=16384, help="points per step (default 16384)")
    p.add_argument(
        "--slice", type=int, default=None, help="z slice to show (default: napari's, the middle)"
    )
    p.add_argument(
        "--screenshot",
        type=Path,
        help="save a window screenshot here, then quit: at --screenshot-step of training "
        "(with --autostart) or after --quit-after seconds",
    )
    p.add_argument(
        "--screenshot-step",
        type=int,
        help="take the --screenshot once the live view shows this training step or a later one",
    )
    p.add_argument(
        "--quit-after",
        type=float,
        help="seconds after which napari quits (taking the --screenshot first, if given)",
    )
    p.add_argument(
        "--compare-screenshot",
        type=Path,
        help="when training ends, press Compare, save a window screenshot here and quit",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    """Start the demo; returns napari's exit status (0)."""
    args = _parser().parse_args(argv)
    import napari
    from qtpy.QtCore import QTimer

    from ._napari.live_view import LiveFrame

    viewer = napari.Viewer(title="napari-moec demo")
    viewer.window.resize(1400, 860)
    viewer.open_sample("napari-moec", "ct_head")
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.settings.set_values(ratio=args.ratio, steps=args.steps, batch_size=args.batch_size)
    if args.experts is not None:  # else the widget's own start (the router on: 4 experts)
        widget.settings.set_values(num_experts=args.experts)
    widget.update_estimate()
    if args.slice is not None:
        viewer.dims.set_current_step(0, args.slice)

    def shoot(path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        viewer.screenshot(str(path), canvas_only=False, flash=False)
        print(f"saved {path}", flush=True)

    def quit_viewer() -> None:
        viewer.close()  # the widget stops its worker when the window closes

    if args.autostart:

        def start() -> None:
            widget.start()
            if args.screenshot is not None and args.screenshot_step is not None:
                widget.worker.yielded.connect(at_step)

        def at_step(event) -> None:
            if isinstance(event, LiveFrame) and event.step >= args.screenshot_step:
                widget.worker.yielded.disconnect(at_step)
                # Let napari draw the frame first (the widget's own slot ran before this one).
                QTimer.singleShot(1000, lambda: (shoot(args.screenshot), quit_viewer()))

        QTimer.singleShot(500, start)
    if args.quit_after is not None:

        def timed() -> None:
            if args.screenshot is not None:
                shoot(args.screenshot)
            quit_viewer()

        QTimer.singleShot(int(args.quit_after * 1000), timed)
    if args.compare_screenshot is not None:
        state = {"compared": False, "since": time.perf_counter()}
        poll = QTimer()

        def step() -> None:
            training = widget.worker is not None or time.perf_counter() - state["since"] < 2
            if training or widget.compare_worker is not None:
                return
            if not state["compared"] and widget.result is not None:
                state["compared"] = True
                widget.compare()
            elif state["compared"]:
                poll.stop()
                QTimer.singleShot(1500, lambda: (shoot(args.compare_screenshot), quit_viewer()))

        poll.timeout.connect(step)
        poll.start(200)
    napari.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
