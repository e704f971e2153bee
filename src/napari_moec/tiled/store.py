"""The tiled store on disk: an OME-Zarr image (NGFF 0.5, zarr v3) with one array ``0`` whose
chunks are MoEC tiles, written one chunk at a time, atomically, by whichever worker made it.

* Metadata comes from zarr-python itself (so it is valid zarr v3) and is written compactly: every
  byte of it counts against the ratio.
* A chunk is written to a temporary file in its folder and renamed into place: a reader, or a run
  that resumes after a crash, never sees half a tile. Resuming re-checks every chunk's CRC.
* While a run is unfinished the store's folder holds ``RUN_STATE`` (what run it is); it is
  removed when the last tile is written.
* ``.ozx`` (zipped OME-Zarr, RFC-9): the run writes a folder next to it, then packs it into one
  ZIP (stored, ZIP64, every ``zarr.json`` first, root first) written atomically.
"""

from __future__ import annotations

import json
import os
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path

import zarr
from zarr.storage import MemoryStore

from ..errors import ConfigError
from .codec import MoecTileCodec, chunk_index_from_key
from .results import TileResult
from .tileformat import TileSpec

__all__ = [
    "ARRAY_PATH",
    "RESULTS_LOG",
    "RUN_STATE",
    "ResultsLog",
    "chunk_path",
    "existing_chunks",
    "metadata_documents",
    "pack_ozx",
    "store_nbytes",
    "write_atomic",
    "write_metadata",
]

ARRAY_PATH = "0"
RUN_STATE = ".napari_moec_run.json"
RESULTS_LOG = ".napari_moec_tiles.jsonl"
_TMP_SUFFIX = ".moec-tmp"
#: NGFF 0.5 wants UDUNITS-2 names; TIFF/ImageJ files say "mm", "um", "µm"...
_UNITS = {
    "m": "meter",
    "cm": "centimeter",
    "mm": "millimeter",
    "um": "micrometer",
    "µm": "micrometer",
    "micron": "micrometer",
    "nm": "nanometer",
    "angstrom": "angstrom",
}
_AXIS_TYPE = {"t": "time", "c": "channel", "z": "space", "y": "space", "x": "space"}


def _compact(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), allow_nan=False).encode()


def metadata_documents(
    spec: TileSpec,
    *,
    axes: str,
    spacing: tuple[float, ...] | None,
    unit: str | None,
    fill_value,
    name: str,
    extra: dict | None = None,
) -> dict[str, bytes]:
    """The ``zarr.json`` files of a store: ``{"zarr.json": group, "0/zarr.json": array}``.

    ``extra`` goes into the group's ``napari_moec`` attributes (target ratio, run summary).
    """
    unit_name = _UNITS.get((unit or "").strip().lower()) or _UNITS.get((unit or "").strip())
    ngff_axes = []
    for letter in axes.lower():
        axis = {"name": letter, "type": _AXIS_TYPE[letter]}
        if axis["type"] == "space" and unit_name:
            axis["unit"] = unit_name
        ngff_axes.append(axis)
    scale = [float(s) for s in spacing] if spacing else [1.0] * spec.grid.ndim
    attributes = {
        "ome": {
            "version": "0.5",
            "multiscales": [
                {
                    "name": name,
                    "axes": ngff_axes,
                    "datasets": [
                        {
                            "path": ARRAY_PATH,
                            "coordinateTransformations": [{"type": "scale", "scale": scale}],
                        }
                    ],
                }
            ],
        },
        "napari_moec": {"tile_stream": "1.0", **(extra or {})},
    }
    memory = MemoryStore()
    group = zarr.create_group(store=memory, zarr_format=3, attributes=attributes)
    group.create_array(
        ARRAY_PATH,
        shape=spec.grid.shape,
        chunks=spec.grid.tile,
        dtype=spec.values.dtype,
        fill_value=fill_value,
        serializer=MoecTileCodec.from_spec(spec),
        compressors=None,
        filters=None,
        dimension_names=list(axes.lower()),
    )
    docs = {}
    for key in ("zarr.json", f"{ARRAY_PATH}/zarr.json"):
        raw = memory._store_dict[key].to_bytes()
        docs[key] = _compact(json.loads(raw))
    return docs


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metadata(root: Path, docs: dict[str, bytes]) -> None:
    for key, data in docs.items():
        write_atomic(root / key, data)


def chunk_key(index) -> str:
    return f"{ARRAY_PATH}/c/" + "/".join(str(int(c)) for c in index)


def chunk_path(root: Path, index) -> Path:
    return root / chunk_key(index)


def existing_chunks(root: Path) -> Iterator[tuple[tuple[int, ...], Path]]:
    """Every chunk file under ``root`` with its grid index; leftover temporary files (a run
    killed mid-write) are deleted on the way."""
    base = root / ARRAY_PATH / "c"
    if not base.is_dir():
        return
    for dirpath, _, filenames in os.walk(base):
        for filename in filenames:
            path = Path(dirpath) / filename
            if filename.endswith(_TMP_SUFFIX):
                path.unlink(missing_ok=True)
                continue
            index = chunk_index_from_key(path.relative_to(root).as_posix())
            if index is not None:
                yield index, path


def store_nbytes(root: Path) -> tuple[int, int]:
    """(chunk bytes, metadata bytes) of a store folder; the run state is not part of it."""
    chunks = sum(path.stat().st_size for _, path in existing_chunks(root))
    meta = sum(p.stat().st_size for p in root.rglob("zarr.json"))
    return chunks, meta


def ozx_entry_overhead(key: str) -> int:
    """ZIP bytes of one stored entry besides its data: local header (30 + name) and central
    directory record (46 + name), plus room for a ZIP64 extra field (28) in archives > 4 GiB."""
    return 30 + 46 + 2 * len(key.encode()) + 28


#: End-of-central-directory records (ZIP64 record and locator included).
OZX_FIXED_OVERHEAD = 22 + 56 + 20


def pack_ozx(root: Path, dest: Path) -> int:
    """Pack the store folder ``root`` into the zipped OME-Zarr ``dest`` (atomically); return its
    size. RFC-9: ZIP64, no ZIP compression, root ``zarr.json`` first, then the other metadata."""
    meta = sorted(root.rglob("zarr.json"), key=lambda p: (len(p.relative_to(root).parts), p))
    chunks = sorted(path for _, path in existing_chunks(root))
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.", suffix=_TMP_SUFFIX, dir=dest.parent)
    os.close(fd)
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED, allowZip64=True) as zf:
            for path in [*meta, *chunks]:
                info = zipfile.ZipInfo(path.relative_to(root).as_posix(), (1980, 1, 1, 0, 0, 0))
                info.compress_type = zipfile.ZIP_STORED
                zf.writestr(info, path.read_bytes())
        os.replace(tmp, dest)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return dest.stat().st_size


def read_state(root: Path) -> dict | None:
    path = root / RUN_STATE
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text())
    except (OSError, ValueError):
        raise ConfigError(f"{root}: unreadable run state {RUN_STATE}; remove the store") from None
    return doc if isinstance(doc, dict) else None


def write_state(root: Path, doc: dict) -> None:
    write_atomic(root / RUN_STATE, _compact(doc))


def clear_state(root: Path) -> None:
    (root / RUN_STATE).unlink(missing_ok=True)


class ResultsLog:
    """One JSON line per finished tile (its errors and cost), appended by the client as tiles
    finish, so a resumed run reports the PSNR of the whole store. A line cut short by a crash
    is ignored (its tile is measured again from its chunk)."""

    def __init__(self, root: Path) -> None:
        self.path = root / RESULTS_LOG

    def append(self, result) -> None:
        doc = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(result).items()}
        with self.path.open("a") as fh:
            fh.write(json.dumps(doc, separators=(",", ":")) + "\n")

    def read(self) -> dict:
        results = {}
        if not self.path.is_file():
            return results
        for line in self.path.read_text().splitlines():
            try:
                doc = json.loads(line)
                doc["index"] = tuple(doc["index"])
                results[doc["index"]] = TileResult(**doc)
            except (ValueError, TypeError, KeyError):
                continue
        return results

    def remove(self) -> None:
        self.path.unlink(missing_ok=True)
