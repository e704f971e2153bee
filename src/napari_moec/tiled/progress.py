"""A terminal progress bar for a tiled run (tqdm): tiles done / total, bytes, running PSNR and
ETA, on stderr."""

from __future__ import annotations

import math
import sys

from .events import ScanProgress, TiledStarted, TileFinished

__all__ = ["TerminalProgress"]


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
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(text, file=sys.stderr)
        else:
            print(text, file=sys.stderr)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
