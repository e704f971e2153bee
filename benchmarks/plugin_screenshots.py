"""The big-data screenshots of docs/plugin.md, from real napari sessions (run under Xvfb).

``browse``: a tiled store opened with File › Open (napari-moec's lazy reader), the expert
partition over the decoded volume, zoomed into a tile corner.

``compress``: a zarr volume (a big lazy layer) compressed from the dock widget: a tiled run on a
local Dask cluster, captured once ``--tiles`` tiles are in the store, the live layers filled in
where the view is (those tiles are trained first).

    python benchmarks/tiled.py run --volume macaque-mirror --shape 512,512,512 --ratio 1024 \\
        --steps 200 --workers 2 --memory-limit 2GB --tag gui-512-r1024 --keep
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/plugin_screenshots.py browse \\
        /tmp/moec-tiled-bench/gui-512-r1024.ome.zarr docs/images/plugin-tiled-browse.png
    xvfb-run -a -s "-screen 0 1600x1000x24" python benchmarks/plugin_screenshots.py compress \\
        /tmp/moec-tiled-bench/macaque_mirror_512x512x512.npy docs/images/widget-tiled.png
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def _wait(app, seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        app.processEvents()
        time.sleep(0.01)


def browse(args) -> dict:
    import napari
    from qtpy.QtWidgets import QApplication

    viewer = napari.Viewer(title="napari-moec: a tiled store, browsed lazily")
    viewer.window.resize(1400, 860)
    app = QApplication.instance()
    t0 = time.perf_counter()
    image, _ = viewer.open(str(args.source), plugin="napari-moec")
    _wait(app, 0.5)
    first = time.perf_counter() - t0
    if args.slice is not None:
        viewer.dims.set_current_step(0, args.slice)
    viewer.camera.zoom *= args.zoom
    viewer.layers.selection.active = image
    _wait(app, 3.0)
    viewer.screenshot(str(args.out), canvas_only=False)
    return {"first_view_s": round(first, 2), "slice": viewer.dims.current_step[0],
            "data_level": int(image.data_level)}  # fmt: skip


def _zarr_volume(npy: Path) -> Path:
    """The .npy as a zarr array of 128³ chunks next to it (a layer napari reads lazily and the
    workers reopen by path)."""
    import numpy as np
    import zarr

    path = npy.with_suffix(".zarr")
    if not path.exists():
        source = np.load(npy, mmap_mode="r")
        out = zarr.create_array(str(path) + ".tmp", shape=source.shape, dtype=source.dtype,
                                chunks=(128, 128, 128))  # fmt: skip
        for z in range(0, source.shape[0], 128):
            out[z : z + 128] = source[z : z + 128]
        Path(str(path) + ".tmp").rename(path)
    return path


def compress(args) -> dict:
    import napari
    import zarr
    from qtpy.QtWidgets import QApplication

    from napari_moec.tiled.events import TileFinished

    volume = zarr.open_array(_zarr_volume(args.source), mode="r")
    viewer = napari.Viewer(title="napari-moec: compressing a big zarr layer tile by tile")
    viewer.window.resize(1400, 960)
    app = QApplication.instance()
    viewer.add_image(volume, name="macaque 512³", contrast_limits=args.limits)
    _, widget = viewer.window.add_plugin_dock_widget("napari-moec", "MoEC compression")
    widget.settings.set_values(ratio=args.ratio, steps=args.steps, workers=args.workers)
    if args.slice is not None:
        viewer.dims.set_current_step(0, args.slice)
    _wait(app, 1.0)
    widget.start()
    tiles: list = []
    widget.worker.yielded.connect(lambda e: tiles.append(e) if isinstance(e, TileFinished) else 0)
    while len(tiles) < args.tiles and widget.worker is not None:
        _wait(app, 0.2)
    _wait(app, 1.0)  # the live refresh of the last tile
    viewer.screenshot(str(args.out), canvas_only=False)
    done = tiles[-1] if tiles else None
    widget.stop()
    while widget.worker is not None:
        _wait(app, 0.2)
    return {
        "tiles_done": done.done if done else 0,
        "total": done.total if done else None,
        "eta_s": round(done.eta) if done else None,
        "order": [e.index for e in tiles],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("what", choices=("browse", "compress"))
    parser.add_argument("source", type=Path, help="browse: a store; compress: a .npy volume")
    parser.add_argument("out", type=Path, help="the screenshot (.png)")
    parser.add_argument("--slice", type=int, default=None)
    parser.add_argument("--zoom", type=float, default=1.0, help="browse: camera zoom factor")
    parser.add_argument("--ratio", type=float, default=1024)
    parser.add_argument("--steps", type=int, default=200, help="compress: steps per tile")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tiles", type=int, default=10, help="compress: shoot after this many")
    parser.add_argument("--limits", type=float, nargs=2, default=(0.0, 383.0))
    args = parser.parse_args()
    record = browse(args) if args.what == "browse" else compress(args)
    print(json.dumps(record))
    os._exit(0)  # skip Qt/napari teardown at interpreter exit


if __name__ == "__main__":
    main()
