"""The steps of a tiled compression before any training, as functions of the job
(:class:`~.runner.TiledCompressor`): scan every tile, plan the bytes, prepare the store (fresh,
or resumed from an unfinished run).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Generator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .. import families
from ..errors import ConfigError, MoecError
from ..families.siren.sizing import DEFAULT_EXPERTS, top_k_of
from ..plan import budget_nbytes
from .allocate import Allocation, allocate, choose_fill
from .events import ScanProgress, TiledEvent
from .results import TileResult, tile_errors
from .scan import TileStats, probe_factor, tile_stats
from .store import (
    OZX_FIXED_OVERHEAD,
    ResultsLog,
    chunk_key,
    chunk_path,
    existing_chunks,
    metadata_documents,
    ozx_entry_overhead,
    read_state,
    write_atomic,
    write_metadata,
    write_state,
)
from .tiledecode import decode_tile
from .tileformat import (
    TileGrid,
    TileNetworks,
    TileSpec,
    TileValues,
    encode_constant_tile,
    parse_tile,
)

__all__ = [
    "StorePlan",
    "check_regions",
    "documents",
    "make_plan",
    "prepare_store",
    "promise_summary",
    "remove_store",
    "scan",
]

#: The run summary's placeholder: the metadata bytes it may take are set aside up front.
SUMMARY_PLACEHOLDER = {"psnr": 999.99, "seconds": 9999999.9}
#: The longest measured max error the summary states (6 significant digits, JSON).
MAX_ERROR_PLACEHOLDER = 1.23456e-100


def promise_summary(job, max_measured: float | None) -> dict:
    """The summary's keys of a quality promise, none without one (the bytes a store without a
    promise wrote before): ``"target"`` the PSNR promised, ``"max_err"`` the largest error
    measured over every network tile as written (the bound itself is the codec's
    ``"bound"``)."""
    doc = {}
    if job.target_psnr is not None:
        doc["target"] = job.target_psnr
    if max_measured is not None:
        doc["max_err"] = float(f"{max_measured:.6g}")
    return doc


STATE_VERSION = 1


@dataclass(frozen=True)
class StorePlan:
    """What a tiled run will write: the shared spec, every tile's kind and bytes, the budget
    (named apart from :class:`napari_moec.plan.Plan`, a single volume's plan)."""

    spec: TileSpec
    allocation: Allocation
    docs: dict
    budget: int
    fingerprint: str


def tile_geometry(job) -> TileGrid:
    """The run's tiles (all that is known before the scan finds the range)."""
    return TileGrid(job.source.shape, job.tile, job.margin)


def check_regions(job) -> None:
    """Every tile's training region must be a volume (three axes longer than one voxel): only a
    zero margin with a one-voxel edge tile breaks that. Checked before any work."""
    grid = tile_geometry(job)
    for index in grid.indices():
        region = grid.region_slices(index)
        if sum(s.stop - s.start > 1 for s in region) < 3:
            raise ConfigError(
                f"tile {index}'s training region {region} is thinner than a 3D volume: use a "
                f"margin of at least 1 voxel or another tile size"
            )


def scan(job, client) -> Generator[TiledEvent, None, list[TileStats]]:
    geometry = tile_geometry(job)
    factor = probe_factor(job.ratio)
    indices = list(geometry.indices())
    total = len(indices)
    every = max(1, total // 100)
    stats: dict = {}
    if job.source.ref is None and job.source.dask is None:
        for n, index in enumerate(indices, 1):
            block = np.asarray(job.source.local[geometry.tile_slices(index)])
            stats[index] = tile_stats(index, block, factor)
            if n % every == 0 or n == total:
                yield ScanProgress(n, total)
    else:
        from distributed import as_completed

        if job.source.ref is not None:
            futures = [
                client.submit(_scan_tile, job.source.ref, index,
                              geometry.tile_slices(index), factor, pure=False)
                for index in indices
            ]  # fmt: skip
        else:
            from dask import delayed

            parts = [delayed(tile_stats)(index, job.source.dask[geometry.tile_slices(index)],
                                         factor) for index in indices]  # fmt: skip
            futures = client.compute(parts)
        for n, future in enumerate(as_completed(futures), 1):
            result = future.result()
            stats[result.index] = result
            if n % every == 0 or n == total:
                yield ScanProgress(n, total)
    ordered = [stats[index] for index in indices]
    for s in ordered:
        if not s.finite:
            where = ",".join(f"{sl.start}:{sl.stop}" for sl in geometry.tile_slices(s.index))
            raise ConfigError(f"volume contains NaN or infinite values (tile {s.index}, {where})")
    return ordered


def store_experts(arch) -> int:
    """The store's expert count (the label stride): the user's, else the family's own start
    (SIREN tiles: ``DEFAULT_EXPERTS``; other families: one network, their "auto")."""
    if arch.num_experts is not None:
        return arch.num_experts
    start = getattr(families.get(arch.model).default_options(), "num_experts", None)
    return start or DEFAULT_EXPERTS


def store_bound(job, dtype: str, value_range: tuple[float, float]) -> float | None:
    """The absolute bound of every voxel (``max_error_rel`` against the *store's* range), or
    None; checked against the range and dtype here, before any tile trains."""
    max_error = job.bound.resolve(value_range)
    if max_error is not None:
        from ..correction import plan_bound

        plan_bound(max_error, dtype, value_range)  # ConfigError: too small for the range
    return max_error


def make_plan(job, stats: list[TileStats]) -> StorePlan:
    vmin = min(s.vmin for s in stats)
    vmax = max(s.vmax for s in stats)
    if vmin == vmax:  # every tile is this one value: no network; any range decodes it
        vmax = vmin + 1.0
    arch = job.arch
    dtype = job.source.dtype.name
    spec = TileSpec(
        tile_geometry(job),
        TileValues(dtype, vmin, vmax, max_error=store_bound(job, dtype, (vmin, vmax))),
        TileNetworks(
            job.quant, top_k=top_k_of(arch), expert_layers=arch.expert_layers, w0=arch.w0,
            w0_first=arch.w0_first, experts=store_experts(arch), family=arch.model,
        ),
    )  # fmt: skip
    fill = choose_fill(stats, spec.values.dtype)
    placeholder = SUMMARY_PLACEHOLDER | promise_summary(
        job, MAX_ERROR_PLACEHOLDER if spec.values.bounded else None
    )
    docs = documents(job, spec, fill, {"ratio": job.ratio, "summary": placeholder})
    budget = budget_nbytes(job.source.nbytes, job.ratio)
    reserved = sum(len(d) for d in docs.values())
    overhead = lambda index: 0  # noqa: E731
    if job.zipped:
        reserved += OZX_FIXED_OVERHEAD + sum(ozx_entry_overhead(k) for k in docs)
        overhead = lambda index: ozx_entry_overhead(chunk_key(index))  # noqa: E731
    if reserved >= budget:
        raise ConfigError(
            f"the store's metadata alone takes {reserved} bytes of the {budget}-byte budget: "
            f"at most {job.source.nbytes / reserved:.0f}x for a tiled store of this volume (a "
            f"single .moec file has less overhead)"
        )
    allocation = allocate(
        spec, stats, budget - reserved, mode=job.allocation, experts=arch.num_experts,
        container_overhead=overhead, fill=fill, exponent=job.exponent,
        options=arch, quality_target=job.train.target_psnr is not None,
    )  # fmt: skip
    digest = hashlib.sha256()
    for doc in (
        spec.to_json(),
        [job.ratio, job.allocation, str(job.dest.suffix), fill],
        asdict(job.train),
        [asdict(t) for t in allocation.tiles],
    ):
        digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
    return StorePlan(spec, allocation, docs, budget, digest.hexdigest())


def documents(job, spec: TileSpec, fill, extra: dict) -> dict:
    return metadata_documents(
        spec, axes=job.source.axes, spacing=job.source.spacing, unit=job.source.unit,
        fill_value=fill, name=job.source.name, extra=extra,
    )  # fmt: skip


def prepare_store(job, plan: StorePlan) -> int:
    root, spec = job.root, plan.spec
    state = read_state(root) if root.is_dir() else None
    resuming = state is not None and state.get("fingerprint") == plan.fingerprint
    if state is not None and not resuming and not job.overwrite:
        raise ConfigError(
            f"{root} holds an unfinished run of other data or settings; pass "
            f"overwrite=True to start again, or the same arguments to resume it"
        )
    if not resuming:
        remove_store(root)
        if job.zipped and job.dest.exists():
            job.dest.unlink()  # _check_dest allowed it: overwrite=True
    root.mkdir(parents=True, exist_ok=True)
    write_state(root, {"version": STATE_VERSION, "fingerprint": plan.fingerprint})
    write_metadata(root, documents(job, spec, plan.allocation.fill_value,
                                         {"ratio": job.ratio}))  # fmt: skip
    log = ResultsLog(root)
    logged = log.read() if resuming else {}
    tiles = {t.index: t for t in plan.allocation.tiles}
    kept = 0
    for index, path in existing_chunks(root):
        try:
            if tiles[index].kind == "empty":
                raise KeyError(index)
            parse_tile(spec, path.read_bytes(), name=str(path), expected_index=index)
        except (KeyError, MoecError):
            path.unlink(missing_ok=True)  # corrupt, or not part of this plan: redo it
            continue
        result = logged.get(index) or measure_existing(job, spec, index, path.read_bytes())
        job.results[index] = result
        kept += 1
        if index not in logged:
            log.append(result)
    for t in plan.allocation.tiles:
        if t.kind == "empty":
            job.results[t.index] = TileResult(t.index, "empty", 0,
                                               voxels=spec.grid.tile_voxels(t.index))  # fmt: skip
        elif t.kind == "constant" and t.index not in job.results:
            data = encode_constant_tile(spec, t.index, t.value)
            write_atomic(chunk_path(root, t.index), data)
            result = TileResult(t.index, "constant", len(data),
                                voxels=spec.grid.tile_voxels(t.index))  # fmt: skip
            job.results[t.index] = result
            log.append(result)
    return kept


def measure_existing(job, spec: TileSpec, index, data: bytes) -> TileResult:
    """Errors of a tile found in the store but not in the run's log (a crash between the
    worker's write and the client's log line)."""
    original = job.source.read(spec.grid.tile_slices(index))
    decoded = decode_tile(spec, data, [np.arange(n) for n in original.shape])
    sse, face_sse, face_voxels = tile_errors(spec, index, original, decoded)
    tile = parse_tile(spec, data)
    hidden = tile.model.hidden_features if tile.model else 0
    kind = "network" if tile.model else "constant"
    worst = None
    if spec.values.bounded and tile.model:
        worst = float(np.abs(decoded.astype(np.float64) - original.astype(np.float64)).max())
    return TileResult(index, kind, len(data), hidden=hidden, voxels=original.size, sse=sse,
                      face_voxels=face_voxels, face_sse=face_sse, max_error=worst,
                      correction_bytes=tile.correction_nbytes)  # fmt: skip


def _scan_tile(ref, index, slices, factor) -> TileStats:
    return tile_stats(index, ref.read(slices), factor)


def remove_store(root: Path) -> None:
    """Delete a store folder we are allowed to replace (one that zarr or we made)."""
    if not root.exists():
        return
    ours = (root / "zarr.json").exists() or (root / ".zattrs").exists()
    if root.is_dir() and not ours and any(root.iterdir()):
        raise ConfigError(f"{root} is not a zarr store; refusing to delete it")
    shutil.rmtree(root) if root.is_dir() else root.unlink()
