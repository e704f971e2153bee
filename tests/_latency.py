"""The event-loop probe behind the GUI latency tests: a 10 ms QTimer whose gaps must stay under
100 ms while a run goes on. Imported by test modules that already have Qt (``importorskip``).

For each gap it also records why the GUI thread was late, so a failure says whose fault it is:
its own CPU time (the plugin's work on the GUI thread) and, on Linux, the time it waited for a
core while runnable (``/proc/.../schedstat``: the machine held it off); the rest of a gap beyond
the tick is time it slept, waiting for the GIL or a lock held by another thread of napari.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

from qtpy.QtCore import QTimer

BOUND = 0.100  #: seconds: the longest gap allowed between two 10 ms ticks


def _queue_wait(path: Path | None) -> float:
    """Seconds the thread has waited for a core while runnable (0 where not measurable)."""
    if path is None:
        return 0.0
    try:
        return int(path.read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return 0.0


class EventLoopProbe:
    """Ticks every 10 ms on the GUI thread between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.gaps: list[tuple[float, float, float, float]] = []  # (at, wall, own CPU, queued)
        stat = Path(f"/proc/self/task/{threading.get_native_id()}/schedstat")
        self._stat = stat if stat.exists() else None
        self._timer = QTimer()
        self._timer.setInterval(10)
        self._timer.timeout.connect(self.tick)

    def _now(self) -> tuple[float, float, float]:
        return time.perf_counter(), time.thread_time(), _queue_wait(self._stat)

    def start(self) -> None:
        self._t0 = self._last = self._now()
        self._timer.start()

    def tick(self) -> None:
        now = self._now()
        wall, cpu, queued = (a - b for a, b in zip(now, self._last, strict=True))
        self.gaps.append((now[0] - self._t0[0], wall, cpu, queued))
        self._last = now

    def stop(self) -> None:
        """Stop ticking; the gap from the last tick to now counts too."""
        self._timer.stop()
        self.tick()

    def slow(self, over: float = 0.05) -> list[tuple[float, int, int, int]]:
        """Gaps over ``over`` s as (at s, wall ms, GUI-thread CPU ms, ms waiting for a core)."""
        return [(round(at, 2), round(w * 1e3), round(c * 1e3), round(q * 1e3))
                for at, w, c, q in self.gaps if w > over]  # fmt: skip

    def assert_responsive(self) -> None:
        worst = max(self.gaps, key=lambda g: g[1])
        at, wall, cpu, queued = worst
        assert wall < BOUND, (
            f"event loop blocked for {wall * 1e3:.0f} ms at {at:.2f} s: the GUI thread ran "
            f"{cpu * 1e3:.0f} ms, waited {queued * 1e3:.0f} ms for a core and slept the rest "
            f"(GIL or a lock); gaps > 50 ms (s, ms, CPU ms, queued ms): {self.slow()}"
        )
