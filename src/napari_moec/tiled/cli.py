"""``moec`` on tiled stores: what ``moec compress IN OUT.ome.zarr|OUT.ozx``, ``moec decompress
STORE OUT`` and ``moec info STORE`` do. ``napari_moec.cli`` owns the parser and dispatches here
when the output (compress) or the input (decompress, info) is a tiled store; these functions take
its parsed arguments. Importing this module imports no Dask.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

from .._terminal import stop_on_interrupt
from ..errors import ConfigError
from ..generators import drain

__all__ = [
    "add_compress_arguments",
    "add_info_arguments",
    "compress",
    "decompress",
    "info",
    "is_store",
    "wants_tiled",
]

#: Outputs written as a tiled store (``.ome.zarr`` ends in ``.zarr``).
TILED_SUFFIXES = (".zarr", ".ozx")


def wants_tiled(output) -> bool:
    """Whether ``moec compress`` should write a tiled store to ``output``."""
    return str(output).lower().rstrip("/").endswith(TILED_SUFFIXES)


def is_store(path) -> bool:
    """Whether ``path`` is a tiled store (for ``decompress`` and ``info``)."""
    from .reader import is_tiled_store

    return wants_tiled(path) and Path(path).exists() and is_tiled_store(path)


def _tile(text: str):
    return text if text == "auto" else int(text)


def add_compress_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of a tiled compression, added to ``moec compress``."""
    g = parser.add_argument_group(
        "tiled store options (OUT.ome.zarr or OUT.ozx; input may be .npy, .tif, zarr, OME-Zarr)"
    )
    g.add_argument(
        "--tile",
        type=_tile,
        default="auto",
        help="tile edge in voxels, or auto: chosen from the ratio (default: auto)",
    )
    g.add_argument(
        "--margin",
        type=_tile,
        default="auto",
        help="context voxels each tile trains on beyond its faces (default: auto: SIREN 1/8 "
        "of the edge, grid none)",
    )
    g.add_argument(
        "--allocation",
        choices=("difficulty", "equal", "uniform"),
        default="difficulty",
        help="share the bytes by measured tile difficulty, equally between the tiles that need "
        "a network, or uniformly between all tiles (the naive baseline)",
    )
    where = g.add_mutually_exclusive_group()
    where.add_argument(
        "--workers",
        type=int,
        default=None,
        help="worker processes of the local Dask cluster (default: one per core)",
    )
    where.add_argument(
        "--scheduler",
        default=None,
        help="address of a running Dask scheduler, e.g. tcp://host:8786",
    )
    g.add_argument(
        "--memory-limit",
        default="auto",
        help="memory per local worker, e.g. 4GiB (default: RAM / workers)",
    )
    g.add_argument(
        "--pin-workers",
        action="store_true",
        help="pin each local worker to cores of its own, one per torch thread (a machine "
        "running nothing else)",
    )
    g.add_argument("--overwrite", action="store_true", help="replace an existing store")


def add_info_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--tiles", action="store_true", help="tiled store: list every tile")


def compress(args: argparse.Namespace, configs: dict) -> int:
    """``moec compress IN OUT.ome.zarr|OUT.ozx``; ``configs`` are the Compressor configurations
    from the command line (``arch``, ``train``, ``quant``, ``run``, ``bound``). The first
    Ctrl-C stops the run keeping every finished tile (run again to resume); a second one
    aborts."""
    from .progress import TerminalProgress
    from .runner import TiledCompressor

    job = TiledCompressor(
        args.input, args.output, args.ratio, tile=args.tile, margin=args.margin,
        allocation=args.allocation, workers=args.workers, scheduler=args.scheduler,
        memory_limit=args.memory_limit, pin=args.pin_workers, overwrite=args.overwrite,
        **configs,
    )  # fmt: skip
    bar = TerminalProgress(enabled=not getattr(args, "quiet", False))
    note = "stopping: finished tiles are kept (Ctrl-C again to abort)"
    with stop_on_interrupt(job, lambda: bar.note(note)):
        try:
            report = drain(job.run(), bar.update)
        finally:
            bar.close()
    if report.stopped:
        print(f"{args.output}: stopped; {len(job.results)} tiles are kept, run again to resume")
        return 130
    print(
        f"{args.output}: {report.store_bytes} bytes in {report.total_tiles} tiles "
        f"({report.network_tiles} networks, {report.constant_tiles} constant, "
        f"{report.empty_tiles} empty), ratio {report.ratio:.1f}x "
        f"(target {report.target_ratio:g}x), PSNR {report.psnr:.2f} dB over the data range, "
        f"seam penalty {report.seam_penalty:.2f} dB, {report.seconds:.0f} s on "
        f"{report.workers} workers"
        + ("" if report.target_psnr is None else f"; target PSNR {report.target_psnr:g} dB")
    )
    if report.max_error is not None:
        print(
            f"max error   <= {report.max_error:g} (guaranteed), measured "
            f"{report.max_error_measured:g}; the tiles' correction streams take "
            f"{report.correction_bytes} of the {report.store_bytes} bytes "
            f"(networks within the {report.target_ratio:g}x budget, store at {report.ratio:.1f}x)"
        )
    return 0


def decompress(args: argparse.Namespace) -> int:
    """``moec decompress STORE OUT [--labels L] [--roi R] [--stride S]``: only the tiles the
    region touches are decoded. ``.npy`` and ``.zarr`` outputs are written chunk by chunk
    (larger than memory is fine); ``.tif`` is assembled in memory."""
    from .reader import open_tiled

    store = open_tiled(args.input)
    stride = args.stride
    spacing = tuple(s * stride for s in store.spacing) if store.spacing else None
    values = store.to_dask(args.roi, stride)
    _write(args.output, values, store.axes, spacing, store.unit)
    if getattr(args, "labels", None):
        _write(args.labels, store.to_dask(args.roi, stride, labels=True), store.axes, spacing,
               store.unit)  # fmt: skip
    print(f"{args.output}: {values.shape} {values.dtype}")
    return 0


def _write(path, array, axes, spacing, unit) -> None:
    import dask.array as da

    path = Path(path)
    suffix = path.suffix.lower()
    if not path.parent.is_dir():
        raise ConfigError(f"output folder does not exist: {path.parent}")
    if suffix == ".npy":
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".npy", dir=path.parent)
        os.close(fd)
        try:
            out = np.lib.format.open_memmap(tmp, mode="w+", dtype=array.dtype, shape=array.shape)
            da.store(array, out, scheduler="threads")
            out.flush()
            del out
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
    elif suffix == ".zarr":
        array.to_zarr(str(path), overwrite=False, compute=True)
    else:
        from .._io import Volume, write_volume

        write_volume(path, Volume(array.compute(scheduler="threads"), axes, spacing, unit))


def info(args: argparse.Namespace) -> int:
    """``moec info STORE [--json] [--tiles]``: the ratio kept and per-tile statistics."""
    from .reader import open_tiled

    doc = open_tiled(args.input).info(tiles=getattr(args, "tiles", False))
    if getattr(args, "json", False):
        print(json.dumps(doc, indent=2))
        return 0
    b, w = doc["network_tile_bytes"] or {}, doc["network_tile_width"] or {}
    target = f" (target {doc['target_ratio']:g}x)" if doc["target_ratio"] else ""
    print(f"store       {doc['store']}: {doc['store_bytes']} bytes (chunks {doc['chunk_bytes']} "
          f"+ metadata {doc['metadata_bytes']}), ratio {doc['ratio']}x{target}")  # fmt: skip
    print(f"volume      {doc['axes']} {doc['shape']} {doc['dtype']}, range {doc['range']}")
    if doc["spacing"]:
        print(f"spacing     {doc['spacing']} {doc['unit'] or ''}".rstrip())
    print(f"tiles       {doc['tiles']} of {'x'.join(map(str, doc['tile']))}, margin "
          f"{max(doc['margin'])}: {doc['network_tiles']} networks, {doc['constant_tiles']} "
          f"constant, {doc['empty_tiles']} empty (fill value)")  # fmt: skip
    if b:
        print(f"networks    bytes {b['min']}/{b['median']:g}/{b['max']} (min/median/max), width "
              f"{w['min']}/{w['median']:g}/{w['max']}, experts per tile "
              f"{doc['experts_per_tile']}, {doc['quantization']}")  # fmt: skip
    print(f"overhead    {doc['tile_overhead_bytes']} bytes of tile headers and CRCs "
          f"({100 * doc['tile_overhead_share']:.2f}% of the chunk bytes)")  # fmt: skip
    if doc["psnr"] is not None:
        target = doc.get("target_psnr")
        made = "" if target is None else f", promised >= {target:g} dB (made for --psnr)"
        print(f"quality     PSNR {doc['psnr']} dB over the data range{made}, {doc['seconds']} s")
    if doc.get("max_error") is not None:
        measured = doc.get("max_error_measured")
        print(f"max error   <= {doc['max_error']:g} (guaranteed)"
              + ("" if measured is None else f", measured {measured:g}")
              + f"; correction streams {doc['correction_bytes']} bytes")  # fmt: skip
    elif not doc["finished"]:
        print("quality     unfinished run: compress again with the same arguments to resume")
    for row in doc.get("tile_list", []):
        print(f"  tile {tuple(row['index'])}: {row['kind']}, {row['bytes']} bytes"
              + (f", width {row['width']}" if row["width"] else ""))  # fmt: skip
    return 0
