"""The client side of a tiled compression: scan, plan, then one Dask task per tile.

:class:`TiledCompressor` is the job as a generator of events (``run()``), the way
:class:`~napari_moec.training.Compressor` is for one volume: a front end drives it from a thread,
``stop()`` ends it keeping every finished tile (the next run with the same arguments resumes),
``pause()``/``resume()`` hold the workers between training steps. :func:`compress_tiled` drains
it with a terminal progress bar.

Order of work, so that bad input fails before anything is trained or written: check what needs
no voxel (path, 3D/4D, dtype, ratio, tile, destination), scan every tile on the cluster (NaN/Inf,
range, constant tiles, difficulty), allocate the byte budget, write the store's metadata, write
the constant tiles, then train the network tiles, largest share first, a bounded number in
flight (each holds its region in memory).
"""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import threading
import time
from collections import deque
from collections.abc import Generator
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from ..config import ArchConfig, QuantConfig, RunConfig, TrainConfig
from ..errors import ConfigError, MoecError
from ..plan import check_ratio
from .allocate import Allocation, allocate, choose_fill
from .cluster import ClusterShape, connect, default_shape, total_threads
from .events import ScanProgress, TiledEvent, TiledReport, TiledStarted, TileFinished, psnr_of
from .scan import TileStats, probe_factor, tile_stats
from .sources import open_source
from .store import (
    OZX_FIXED_OVERHEAD,
    ResultsLog,
    chunk_key,
    chunk_path,
    clear_state,
    existing_chunks,
    metadata_documents,
    ozx_entry_overhead,
    pack_ozx,
    read_state,
    store_nbytes,
    write_atomic,
    write_metadata,
    write_state,
)
from .task import Signals, TileJob, TileResult, compress_tile, tile_errors
from .tiledecode import decode_tile
from .tileformat import TileSpec, encode_constant_tile, parse_tile
from .tiling import choose_margin, choose_tile

__all__ = ["TiledCompressor", "compress_tiled"]

#: The run summary's placeholder: the metadata bytes it may take are set aside up front.
_SUMMARY_PLACEHOLDER = {"psnr": 999.99, "seconds": 9999999.9}
_STATE_VERSION = 1


@dataclass(frozen=True)
class _Plan:
    spec: TileSpec
    allocation: Allocation
    docs: dict
    budget: int
    fingerprint: str


class TiledCompressor:
    """Compress a volume of any size into a tiled OME-Zarr store (``.ome.zarr`` folder or
    ``.ozx`` file), one MoE SIREN per tile, on a Dask distributed cluster.

    Parameters
    ----------
    source
        A 3D/4D array-like (numpy, dask, zarr) or a path: ``.npy`` (memory-mapped), ``.tif``
        (read through tifffile's zarr view), a zarr / OME-Zarr folder or ``.ozx``.
    dest
        The store to write: a folder (``.ome.zarr``) or a zipped OME-Zarr file (``.ozx``).
    ratio
        ``original bytes / store bytes`` (every chunk and metadata byte) is at least this.
    tile, margin
        Chunk shape ("auto", an edge in voxels, or one size per axis) and context voxels.
    allocation
        "difficulty" (bytes follow each tile's measured difficulty) or "equal".
    arch, train, quant, run
        As for :class:`~napari_moec.training.Compressor`; widths are sized per tile, so
        ``arch.hidden_features`` must be None. ``train`` is each tile's schedule.
    client, scheduler, workers, memory_limit
        A Dask ``Client`` to use, or a scheduler address, or the size of the LocalCluster
        started for the run (default: one worker per core).
    overwrite
        Replace an existing store at ``dest`` (an unfinished run of the same job resumes
        without it).
    hook
        Called with each tile's job on its worker before training (fault injection, logging).
    """

    def __init__(
        self,
        source,
        dest,
        ratio: float = 256.0,
        *,
        tile="auto",
        margin="auto",
        allocation: str = "difficulty",
        arch: ArchConfig | None = None,
        train: TrainConfig | None = None,
        quant: QuantConfig | None = None,
        run: RunConfig | None = None,
        client=None,
        scheduler: str | None = None,
        workers: int | None = None,
        memory_limit="auto",
        overwrite: bool = False,
        axes: str | None = None,
        spacing=None,
        unit: str | None = None,
        hook=None,
    ) -> None:
        self.source = open_source(source, axes=axes, spacing=spacing, unit=unit)
        self.ratio = check_ratio(ratio)
        self.tile = choose_tile(self.source.shape, self.source.dtype, self.ratio, tile)
        self.margin = choose_margin(self.tile, margin)
        if allocation not in ("difficulty", "equal"):
            raise ConfigError(f"allocation must be 'difficulty' or 'equal', got {allocation!r}")
        self.allocation = allocation
        self.arch = arch or ArchConfig()
        if self.arch.hidden_features is not None:
            raise ConfigError("hidden_features is sized per tile; leave it unset")
        self.train = train or TrainConfig()
        self.quant = quant or QuantConfig()
        self.run_config = run or RunConfig()
        self.dest = Path(dest)
        self.zipped = self.dest.suffix.lower() == ".ozx"
        self.root = self.dest.with_name(self.dest.name + ".partial") if self.zipped else self.dest
        self.overwrite = overwrite
        self._check_dest()
        self._client, self._scheduler = client, scheduler
        self.shape: ClusterShape = default_shape(self.run_config.device, workers, memory_limit)
        self.hook = hook
        self._stop = threading.Event()
        self._pause = threading.Event()
        #: Results of every tile in the store so far (index -> TileResult).
        self.results: dict[tuple[int, ...], TileResult] = {}

    # -- control from other threads ----------------------------------------------------------
    def stop(self) -> None:
        """End the run soon: tiles in the store stay, tiles in training are dropped."""
        self._stop.set()

    def pause(self) -> None:
        """Hold every worker between training steps and submit no new tile."""
        self._pause.set()

    def resume(self) -> None:
        self._pause.clear()

    # -- checks that read no voxel ---------------------------------------------------------
    def _check_dest(self) -> None:
        if not self.dest.parent.is_dir():
            raise ConfigError(f"output folder does not exist: {self.dest.parent}")
        if self.overwrite or not self.dest.exists():
            return
        if self.zipped:
            if not self.root.exists():
                raise ConfigError(f"{self.dest} exists; pass overwrite=True to replace it")
            return
        if self.dest.is_dir() and (not any(self.dest.iterdir()) or read_state(self.dest)):
            return  # empty, or an unfinished run (resumed when its plan matches)
        raise ConfigError(f"{self.dest} exists; pass overwrite=True to replace it")

    # -- the job ---------------------------------------------------------------------------
    def fit(self) -> TiledReport:
        """Run to the end, ignoring the events."""
        run = self.run()
        while True:
            try:
                next(run)
            except StopIteration as done:
                return done.value

    def run(self) -> Generator[TiledEvent, None, TiledReport]:
        """Scan, plan, compress. Yields :mod:`.events`; returns the :class:`TiledReport`."""
        start = time.monotonic()
        client, owned = connect(self._client, self._scheduler, self.shape)
        try:
            stats = yield from self._scan(client)
            plan = self._plan(stats)
            resumed = self._prepare_store(plan)
            todo = [t for t in plan.allocation.tiles if t.index not in self.results]
            todo.sort(key=lambda t: -t.payload_budget)  # longest first: fewer idle workers
            workers = total_threads(client)
            yield TiledStarted(
                dest=str(self.dest), shape=self.source.shape, tile=self.tile, margin=self.margin,
                total_tiles=len(plan.allocation.tiles),
                network_tiles=plan.allocation.count("network"),
                constant_tiles=plan.allocation.count("constant"),
                empty_tiles=plan.allocation.count("empty"), resumed=resumed, todo=len(todo),
                budget_bytes=plan.budget, original_bytes=self.source.nbytes, ratio=self.ratio,
                workers=workers,
            )  # fmt: skip
            stopped = yield from self._compress(client, plan, todo, workers)
            return self._finish(plan, stopped, resumed, start, workers)
        finally:
            if owned:
                cluster = getattr(client, "cluster", None)
                client.close()
                if cluster is not None:
                    cluster.close()

    # -- 1. scan ---------------------------------------------------------------------------
    def _geometry(self) -> TileSpec:
        """A spec for tile geometry only (the range is not known before the scan)."""
        return TileSpec(self.source.shape, self.tile, self.margin, self.source.dtype.name,
                        0.0, 1.0, self.quant)  # fmt: skip

    def _scan(self, client) -> Generator[TiledEvent, None, list[TileStats]]:
        geometry = self._geometry()
        factor = probe_factor(self.ratio)
        indices = list(geometry.indices())
        total = len(indices)
        every = max(1, total // 100)
        stats: dict = {}
        if self.source.ref is None and self.source.dask is None:
            for n, index in enumerate(indices, 1):
                block = np.asarray(self.source.local[geometry.tile_slices(index)])
                stats[index] = tile_stats(index, block, factor)
                if n % every == 0 or n == total:
                    yield ScanProgress(n, total)
        else:
            from distributed import as_completed

            if self.source.ref is not None:
                futures = [
                    client.submit(_scan_tile, self.source.ref, index,
                                  geometry.tile_slices(index), factor, pure=False)
                    for index in indices
                ]  # fmt: skip
            else:
                from dask import delayed

                parts = [delayed(tile_stats)(index, self.source.dask[geometry.tile_slices(index)],
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
                raise ConfigError(
                    f"volume contains NaN or infinite values (tile {s.index}, {where})"
                )
        return ordered

    # -- 2. plan ---------------------------------------------------------------------------
    def _plan(self, stats: list[TileStats]) -> _Plan:
        vmin = min(s.vmin for s in stats)
        vmax = max(s.vmax for s in stats)
        if vmin == vmax:  # every tile is this one value: no network; any range decodes it
            vmax = vmin + 1.0
        arch = self.arch
        spec = TileSpec(
            shape=self.source.shape, tile=self.tile, margin=self.margin,
            dtype=self.source.dtype.name, vmin=vmin, vmax=vmax, quant=self.quant,
            top_k=arch.top_k, expert_layers=arch.expert_layers, w0=arch.w0,
            w0_first=arch.w0_first, experts=arch.num_experts or 2,
        )  # fmt: skip
        fill = choose_fill(stats, spec.dtype)
        docs = self._documents(spec, fill, {"ratio": self.ratio, "summary": _SUMMARY_PLACEHOLDER})
        budget = int(self.source.nbytes // self.ratio)
        reserved = sum(len(d) for d in docs.values())
        overhead = lambda index: 0  # noqa: E731
        if self.zipped:
            reserved += OZX_FIXED_OVERHEAD + sum(ozx_entry_overhead(k) for k in docs)
            overhead = lambda index: ozx_entry_overhead(chunk_key(index))  # noqa: E731
        allocation = allocate(
            spec, stats, budget - reserved, mode=self.allocation, experts=arch.num_experts,
            container_overhead=overhead, fill=fill,
        )  # fmt: skip
        digest = hashlib.sha256()
        for doc in (
            spec.to_json(),
            [self.ratio, self.allocation, str(self.dest.suffix), fill],
            asdict(self.train),
            [asdict(t) for t in allocation.tiles],
        ):
            digest.update(json.dumps(doc, sort_keys=True, default=str).encode())
        return _Plan(spec, allocation, docs, budget, digest.hexdigest())

    def _documents(self, spec: TileSpec, fill, extra: dict) -> dict:
        return metadata_documents(
            spec, axes=self.source.axes, spacing=self.source.spacing, unit=self.source.unit,
            fill_value=fill, name=self.source.name, extra=extra,
        )  # fmt: skip

    # -- 3. the store: fresh or resumed ------------------------------------------------------
    def _prepare_store(self, plan: _Plan) -> int:
        root, spec = self.root, plan.spec
        state = read_state(root) if root.is_dir() else None
        resuming = state is not None and state.get("fingerprint") == plan.fingerprint
        if state is not None and not resuming and not self.overwrite:
            raise ConfigError(
                f"{root} holds an unfinished run of other data or settings; pass "
                f"overwrite=True to start again, or the same arguments to resume it"
            )
        if not resuming:
            _remove_store(root)
            if self.zipped and self.dest.exists():
                self.dest.unlink()  # _check_dest allowed it: overwrite=True
        root.mkdir(parents=True, exist_ok=True)
        write_state(root, {"version": _STATE_VERSION, "fingerprint": plan.fingerprint})
        write_metadata(root, self._documents(spec, plan.allocation.fill_value,
                                             {"ratio": self.ratio}))  # fmt: skip
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
            result = logged.get(index) or self._measure(spec, index, path.read_bytes())
            self.results[index] = result
            kept += 1
            if index not in logged:
                log.append(result)
        for t in plan.allocation.tiles:
            if t.kind == "empty":
                self.results[t.index] = TileResult(t.index, "empty", 0,
                                                   voxels=spec.tile_voxels(t.index))  # fmt: skip
            elif t.kind == "constant" and t.index not in self.results:
                data = encode_constant_tile(spec, t.index, t.value)
                write_atomic(chunk_path(root, t.index), data)
                result = TileResult(t.index, "constant", len(data),
                                    voxels=spec.tile_voxels(t.index))  # fmt: skip
                self.results[t.index] = result
                log.append(result)
        return kept

    def _measure(self, spec: TileSpec, index, data: bytes) -> TileResult:
        """Errors of a tile found in the store but not in the run's log (a crash between the
        worker's write and the client's log line)."""
        original = self.source.read(spec.tile_slices(index))
        decoded = decode_tile(spec, data, [np.arange(n) for n in original.shape])
        sse, face_sse, face_voxels = tile_errors(spec, index, original, decoded)
        tile = parse_tile(spec, data)
        hidden = tile.model.hidden_features if tile.model else 0
        kind = "network" if tile.model else "constant"
        return TileResult(index, kind, len(data), hidden=hidden, voxels=original.size, sse=sse,
                          face_voxels=face_voxels, face_sse=face_sse)  # fmt: skip

    # -- 4. the tiles ------------------------------------------------------------------------
    def _compress(self, client, plan: _Plan, todo, workers: int):
        from distributed import Event, wait

        run_id = plan.fingerprint[:12] + f"-{time.time_ns()}"
        signals = Signals(f"moec-stop-{run_id}", f"moec-pause-{run_id}")
        stop_event, pause_event = Event(signals.stop, client), Event(signals.pause, client)
        run = replace(self.run_config, threads=self.run_config.threads or self.shape.torch_threads)
        log = ResultsLog(self.root)
        pending, running = deque(todo), {}
        window = 2 * workers
        total = len(plan.allocation.tiles)
        started, finished_here = time.monotonic(), 0
        paused, finished = False, False
        try:
            while pending or running:
                if self._stop.is_set():
                    # Tiles in training see the stop within a second and write nothing; those
                    # that finish first are kept. Wait for both, so nothing of this run is
                    # still writing when it returns (a resumed run starts from a settled store).
                    stop_event.set()
                    for future in wait(list(running)).done:
                        if future.status == "finished":
                            result = future.result()
                            self.results[result.index] = result
                            log.append(result)
                    finished = True
                    return True
                if self._pause.is_set() != paused:
                    paused = self._pause.is_set()
                    pause_event.set() if paused else pause_event.clear()
                while not paused and pending and len(running) < window:
                    t = pending.popleft()
                    running[self._submit(client, plan, t, run, signals)] = t.index
                if not running:
                    time.sleep(0.2)
                    continue
                try:
                    done, _ = wait(list(running), timeout=0.5, return_when="FIRST_COMPLETED")
                except TimeoutError:
                    continue
                for future in done:
                    index = running.pop(future)
                    result = _result(future, index)
                    self.results[index] = result
                    log.append(result)
                    finished_here += 1
                    yield self._event(result, total, started, finished_here, len(pending) +
                                      len(running))  # fmt: skip
            finished = True
            return False
        finally:
            if not finished:  # stopped, failed or interrupted: tiles in training drop out
                stop_event.set()
                client.cancel(list(running))

    def _submit(self, client, plan: _Plan, t, run: RunConfig, signals: Signals):
        source = self.source
        job = TileJob(plan.spec, t, str(self.root), self.train, run, source.ref, signals, self.hook)
        key = f"moec-tile-{plan.fingerprint[:12]}-" + "-".join(map(str, t.index))
        if source.ref is not None:
            return client.submit(compress_tile, job, key=key, pure=False)
        slices = plan.spec.region_slices(t.index)
        if source.dask is not None:
            region = client.compute(source.dask[slices])
        else:
            region = client.scatter(np.ascontiguousarray(np.asarray(source.local[slices])))
        return client.submit(compress_tile, job, region, key=key, pure=False)

    def _event(self, result: TileResult, total, started, finished_here, remaining) -> TileFinished:
        done = list(self.results.values())
        sse = sum(r.sse for r in done)
        voxels = sum(r.voxels for r in done)
        elapsed = time.monotonic() - started
        return TileFinished(
            index=result.index, kind=result.kind, nbytes=result.nbytes,
            psnr=psnr_of(result.sse, result.voxels), hidden=result.hidden,
            seconds=result.seconds, done=len(done), total=total,
            bytes_done=sum(r.nbytes for r in done), running_psnr=psnr_of(sse, voxels),
            elapsed=elapsed, eta=elapsed / finished_here * remaining,
        )  # fmt: skip

    # -- 5. the end ----------------------------------------------------------------------------
    def _finish(self, plan: _Plan, stopped: bool, resumed: int, start: float, workers: int):
        results = list(self.results.values())
        complete = not stopped and len(results) == len(plan.allocation.tiles)
        sse = sum(r.sse for r in results)
        voxels = sum(r.voxels for r in results)
        net = [r for r in results if r.kind == "network"]
        face_sse, face_vox = sum(r.face_sse for r in net), sum(r.face_voxels for r in net)
        net_sse, net_vox = sum(r.sse for r in net), sum(r.voxels for r in net)
        psnr = psnr_of(sse, voxels)
        seconds = time.monotonic() - start
        if complete:
            summary = {"psnr": round(psnr, 2) if math.isfinite(psnr) else None,
                       "seconds": round(seconds, 1)}  # fmt: skip
            write_metadata(
                self.root,
                self._documents(
                    plan.spec, plan.allocation.fill_value, {"ratio": self.ratio, "summary": summary}
                ),
            )
            ResultsLog(self.root).remove()
            clear_state(self.root)
        chunk_bytes, meta_bytes = store_nbytes(self.root)
        store_bytes = chunk_bytes + meta_bytes
        if complete and self.zipped:
            store_bytes = pack_ozx(self.root, self.dest)
            _remove_store(self.root)
        if complete and self.source.nbytes / store_bytes < self.ratio:
            raise MoecError(f"internal: the store takes {store_bytes} bytes, over its budget")
        psnr_faces = psnr_of(face_sse, face_vox)
        psnr_interior = psnr_of(net_sse - face_sse, net_vox - face_vox)
        return TiledReport(
            dest=str(self.dest), shape=self.source.shape, dtype=self.source.dtype.name,
            tile=self.tile, margin=self.margin, target_ratio=self.ratio,
            original_bytes=self.source.nbytes, store_bytes=store_bytes, chunk_bytes=chunk_bytes,
            metadata_bytes=store_bytes - chunk_bytes, ratio=self.source.nbytes / store_bytes,
            total_tiles=len(plan.allocation.tiles),
            network_tiles=plan.allocation.count("network"),
            constant_tiles=plan.allocation.count("constant"),
            empty_tiles=plan.allocation.count("empty"), resumed=resumed, psnr=psnr,
            psnr_network=psnr_of(net_sse, net_vox), psnr_faces=psnr_faces,
            psnr_interior=psnr_interior, seam_penalty=psnr_interior - psnr_faces,
            seconds=seconds, tile_seconds=sum(r.seconds for r in net),
            peak_rss=max((r.peak_rss for r in net), default=0), workers=workers,
            stopped=not complete, allocation=self.allocation,
        )  # fmt: skip


def _result(future, index) -> TileResult:
    """A finished tile's result, or its failure as a MoecError naming the tile."""
    try:
        return future.result()
    except MoecError as exc:
        raise type(exc)(f"tile {index}: {exc}") from exc
    except Exception as exc:
        if type(exc).__name__ == "KilledWorker":
            raise MoecError(
                f"tile {index} killed its worker repeatedly (out of memory? use smaller tiles or "
                f"a larger memory_limit): {exc}"
            ) from exc
        raise MoecError(f"tile {index} failed: {type(exc).__name__}: {exc}") from exc


def _scan_tile(ref, index, slices, factor) -> TileStats:
    return tile_stats(index, ref.read(slices), factor)


def _remove_store(root: Path) -> None:
    """Delete a store folder we are allowed to replace (one that zarr or we made)."""
    if not root.exists():
        return
    ours = (root / "zarr.json").exists() or (root / ".zattrs").exists()
    if root.is_dir() and not ours and any(root.iterdir()):
        raise ConfigError(f"{root} is not a zarr store; refusing to delete it")
    shutil.rmtree(root) if root.is_dir() else root.unlink()


def compress_tiled(
    source, dest, ratio: float = 256.0, *, tile="auto", client=None, progress: bool = True,
    **options,
) -> TiledReport:  # fmt: skip
    """Compress ``source`` into the tiled store ``dest``; blocks until done (or Ctrl-C, which
    keeps the finished tiles: run again with the same arguments to resume).

    Takes the arguments of :class:`TiledCompressor`; ``progress`` shows a terminal bar (tqdm).

    Examples
    --------
    >>> import napari_moec
    >>> report = napari_moec.compress_tiled("scan.tif", "scan.ome.zarr", 256)  # doctest: +SKIP
    >>> report.ratio, report.psnr                                               # doctest: +SKIP
    """
    from .progress import TerminalProgress

    job = TiledCompressor(source, dest, ratio, tile=tile, client=client, **options)
    bar = TerminalProgress(enabled=progress)
    run = job.run()
    try:
        while True:
            bar.update(next(run))
    except StopIteration as done:
        return done.value
    except KeyboardInterrupt:
        run.close()
        bar.note(
            "interrupted: finished tiles are kept; run again with the same arguments to resume"
        )
        raise
    finally:
        bar.close()
