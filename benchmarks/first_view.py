"""How fast napari shows a tiled store, and how much memory browsing it takes.

Opens a napari viewer (``--show`` for a visible window: then every repaint runs through the
OpenGL stack, which under Xvfb is software rendering), opens the store with napari-moec's reader
(File › Open: lazy multiscale layers that decode only the voxels shown) and measures:

- ``first_view_s``: from ``viewer.open`` until the first plane is drawn (both layers);
- ``step_s``: moving the slider by one plane (new tile parts decode), and back to a plane
  seen before (the cache);
- ``view_3d_s``: switching to the 3D view (the coarsest level, whole);
- memory: resident set size after opening, and while stepping through the volume
  (``--browse-step``), next to the decoded-tile cache's bytes: it must level off;
- ``step_gap_ms``: the longest the event loop was blocked during each slider step (a 10 ms
  timer): napari slices on the GUI thread by default, so a step blocks it for the decode;
  ``--async`` turns on napari's asynchronous slicing (Preferences › Experimental), where the
  decode runs in napari's slicing thread and ``step_s`` is the time until the plane is drawn.

``--reader dask`` opens the same store as dask arrays with one chunk per tile
(``TiledStore.to_dask``, the same levels): the design the lazy arrays replace, since napari's
slice of a dask chunk decodes the whole tile first.

    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/first_view.py STORE --show \\
        --out docs/benchmarks/data/gui
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/first_view.py STORE --show \\
        --reader dask --browse-step 0 --out docs/benchmarks/data/gui
"""

from __future__ import annotations

import argparse
import os
import resource
import time
from pathlib import Path

from _common import provenance, write_json


def _rss_mb() -> float:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _settle(app, rounds: int = 5) -> None:
    for _ in range(rounds):
        app.processEvents()


def _until_loaded(app, layers, timeout: float = 120.0) -> None:
    """Process events until every layer's slice is drawn (async slicing: later than the step)."""
    end = time.perf_counter() + timeout
    _settle(app)
    while not all(layer.loaded for layer in layers) and time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.002)
    _settle(app)


def _open(viewer, path: str, reader: str):
    if reader == "moec":
        return viewer.open(path, plugin="napari-moec")
    from napari_moec import open_tiled
    from napari_moec._napari.lazy import pyramid
    from napari_moec._napari.lazy_blocks import TiledBlocks
    from napari_moec._napari.reader import store_name

    store = open_tiled(path)
    strides = [lv.stride for lv in pyramid(TiledBlocks(store))]  # the same levels as ours
    image = [store.to_dask(stride=s) for s in strides]
    labels = [store.to_dask(stride=s, labels=True) for s in strides]
    name = store_name(path)
    limits = (store.spec.values.vmin, store.spec.values.vmax)
    return [
        viewer.add_image(image, multiscale=True, contrast_limits=limits, name=f"{name} dask"),
        viewer.add_labels(labels, multiscale=True, name=f"{name} dask experts", opacity=0.25),
    ]


def measure(args: argparse.Namespace) -> dict:
    import napari
    from qtpy.QtCore import QTimer
    from qtpy.QtWidgets import QApplication

    from napari_moec import open_tiled
    from napari_moec._napari.lazy import CACHE
    from napari_moec.tiled.tiledecode import DECODE_COUNTS

    store = open_tiled(args.store)
    info = store.info()
    if args.async_slicing:
        from napari.settings import get_settings

        get_settings().experimental.async_ = True
    viewer = napari.Viewer(show=args.show)
    app = QApplication.instance()
    _settle(app, 20)
    rss_viewer = _rss_mb()
    t0 = time.perf_counter()
    layers = _open(viewer, str(args.store), args.reader)
    opened = time.perf_counter() - t0
    _until_loaded(app, layers)
    first = time.perf_counter() - t0
    rss_first = _rss_mb()
    decodes_first = sum(DECODE_COUNTS.values())
    z = viewer.dims.current_step[0]
    canvas = viewer.window._qt_viewer.canvas.size if args.show else None
    gaps: list[float] = []
    last = [time.perf_counter()]

    def tick() -> None:
        now = time.perf_counter()
        gaps.append(now - last[0])
        last[0] = now

    timer = QTimer()
    timer.setInterval(10)
    timer.timeout.connect(tick)
    steps, step_gaps = [], []
    for k in range(1, args.steps + 1):
        gaps.clear()
        timer.start()
        t = last[0] = time.perf_counter()
        viewer.dims.set_current_step(0, z + k)
        _until_loaded(app, layers)
        steps.append(time.perf_counter() - t)
        timer.stop()
        tick()
        step_gaps.append(max(gaps))
    t = time.perf_counter()
    viewer.dims.set_current_step(0, z)
    _until_loaded(app, layers)
    back = time.perf_counter() - t
    t = time.perf_counter()
    viewer.dims.ndisplay = 3
    _until_loaded(app, layers)
    view_3d = time.perf_counter() - t
    viewer.dims.ndisplay = 2
    _until_loaded(app, layers)
    browse = []
    if args.browse_step:
        for n, plane in enumerate(range(0, store.shape[-3], args.browse_step), 1):
            viewer.dims.set_current_step(0, plane)
            _until_loaded(app, layers)
            if n % 16 == 0:
                browse.append({"planes": n, "rss_mb": round(_rss_mb()),
                               "cache_mb": round(CACHE.nbytes / 2**20)})  # fmt: skip
    record = {
        "store": str(args.store),
        "reader": args.reader,
        "shape": list(store.shape),
        "dtype": store.spec.values.dtype,
        "tile": list(store.spec.grid.tile),
        "network_tile_width": info["network_tile_width"],
        "store_bytes": info["store_bytes"],
        "show": args.show,
        "canvas_px": list(canvas) if canvas is not None else None,
        "levels": [list(lv.shape) for lv in layers[0].data],
        "data_level_first_view": int(layers[0].data_level),
        "open_s": round(opened, 3),
        "first_view_s": round(first, 3),
        "tile_decodes_first_view": decodes_first,
        "async_slicing": args.async_slicing,
        "step_s": [round(s, 3) for s in steps],
        "step_gap_ms": [round(g * 1000) for g in step_gaps],
        "back_to_seen_plane_s": round(back, 3),
        "view_3d_s": round(view_3d, 3),
        "rss_viewer_mb": round(rss_viewer),
        "rss_first_view_mb": round(rss_first),
        "rss_after_browsing_mb": round(_rss_mb()),
        "peak_rss_mb": round(_peak_mb()),
        "cache_limit_mb": round(CACHE.max_bytes / 2**20),
        "browse": browse,
        "load_average_end": os.getloadavg(),
    }
    if args.screenshot:
        viewer.dims.set_current_step(0, z)
        _settle(app)
        viewer.screenshot(str(args.screenshot), canvas_only=False)
    viewer.close()
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("store", type=Path, help="a tiled store (.ome.zarr folder or .ozx)")
    parser.add_argument("--reader", choices=("moec", "dask"), default="moec")
    parser.add_argument("--show", action="store_true", help="a visible window (repaints)")
    parser.add_argument(
        "--async",
        dest="async_slicing",
        action="store_true",
        help="napari's asynchronous slicing (Preferences › Experimental)",
    )
    parser.add_argument("--steps", type=int, default=8, help="single-plane slider steps")
    parser.add_argument("--browse-step", type=int, default=2, help="planes; 0: no browsing")
    parser.add_argument("--screenshot", type=Path, default=None)
    parser.add_argument("--tag", default=None)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/out/gui"))
    args = parser.parse_args()
    record = {**measure(args), **provenance("cpu")}
    tag = args.tag or "-".join(
        [args.store.name.split(".")[0], args.reader] + (["async"] if args.async_slicing else [])
    )
    write_json(args.out / f"first_view_{tag}.json", record)
    print(
        f"{args.reader}: first view {record['first_view_s']} s "
        f"({record['tile_decodes_first_view']} tile decodes, level {record['levels'][0]}), "
        f"step {max(record['step_s'], default=0)} s max (event loop blocked up to "
        f"{max(record['step_gap_ms'], default=0)} ms), 3D {record['view_3d_s']} s, RSS "
        f"{record['rss_viewer_mb']} -> {record['rss_first_view_mb']} MB, after browsing "
        f"{record['rss_after_browsing_mb']} MB  -> {args.out}"
    )
    os._exit(0)  # skip Qt/napari teardown at interpreter exit: nothing left to save


if __name__ == "__main__":
    main()
