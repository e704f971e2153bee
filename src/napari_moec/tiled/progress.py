"""A terminal progress bar for a tiled run (tqdm): tiles done / total, bytes, running PSNR and
ETA, on stderr.

What it writes is the progress display the user asked for (``moec compress``, or
``compress_tiled(progress=True)``), so it goes to the terminal through tqdm, which keeps the bar
intact around the note lines; it is silent when disabled. The run's plan is also a log record
(``logging``, INFO) for programs that keep logs rather than watch a bar.
"""

from __future__ import annotations

import logging
import math
import sys

from .events import ScanProgress, TiledStarted, TileFinished

__all__ = ["TerminalProgress"]

log = logging.getLogger(__name__)


class TerminalProgress:
    """Turns :mod:`.events` into tqdm bars (scan, then tiles); silent when not ``enabled``."""

    def __init__(self, enabled: bool = True) -> None:
        self.enabled = enabled
        self.bar = None

    def _new(self, total: int, desc: str, initial: int = 0, unit: str = "tile"):
        from tqdm.auto import tqdm

        self.close()
        self.bar = tqdm(total=total, initial=initial, desc=desc, unit=unit, file=sys.stderr,
                        dynamic_ncols=True, smoothing=0.1)  # fmt: skip

    def update(self, event) -> None:
        if isinstance(event, TiledStarted):
            log.info(
                "%d tiles of %s (%d networks, %d constant, %d empty; %d resumed), budget %d "
                "bytes (%gx) on %d workers", event.total_tiles, event.tile, event.network_tiles,
                event.constant_tiles, event.empty_tiles, event.resumed, event.budget_bytes,
                event.ratio, event.workers,
            )  # fmt: skip
        if not self.enabled:
            return
        if isinstance(event, ScanProgress):
            if self.bar is None or self.bar.desc != "scan":
                self._new(event.total, "scan")
            self.bar.n = event.done
            self.bar.refresh()
        elif isinstance(event, TiledStarted):
            self.note(
                f"{event.total_tiles} tiles of {'x'.join(map(str, event.tile))} (margin "
                f"{max(event.margin)}): {event.network_tiles} networks, {event.constant_tiles} "
                f"constant, {event.empty_tiles} empty; {event.resumed} kept from an earlier run; "
                f"budget {event.budget_bytes} bytes ({event.ratio:g}x) on {event.workers} workers"
            )
            self._new(event.total_tiles, "tiles", initial=event.total_tiles - event.todo)
        elif isinstance(event, TileFinished):
            self.bar.n = event.done
            psnr = "" if math.isnan(event.running_psnr) else f"{event.running_psnr:.2f} dB"
            self.bar.set_postfix_str(f"{event.bytes_done} B, PSNR {psnr}", refresh=True)

    def note(self, text: str) -> None:
        """A line of the progress display (not a log record: it is what the bar says in
        words), written so that a running bar is redrawn below it."""
        if not self.enabled:
            return
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
