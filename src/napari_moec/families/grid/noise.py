"""The uniform noise that stands in for rounding while the latents train (the rate proxy's
"latents + U(-1/2, 1/2)"), one fresh field a step.

On a CPU, drawing it was an eighth of a large volume's step: torch's CPU generator (a Mersenne
twister, one value at a time, one thread) took 3.3 ms of a 27.9 ms step on the macaque at
256x (661,775 latents, 2 threads; ``benchmarks/grid_profile.py``, ``aten::uniform_``), more
than the fused rate proxy itself. There the field is a random *window* of a table drawn once:
``table[o : o + n]`` at a random offset ``o`` each step, a view (no draw, no copy). Each
field is ``n`` independent uniforms, as a fresh draw is; successive fields differ at every
latent (unless two offsets coincide, one chance in the number of offsets); the table holds
``n + MIN_OFFSETS`` values, so a run draws from a million distinct fields, and the table costs
the latents' own float32 bytes plus 4 MB (a tile's memory is counted, docs/tiled.md).
Accelerators draw fresh noise every step (their generators are fast and parallel).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

__all__ = ["MIN_OFFSETS", "LatentNoise"]

#: Distinct windows the table offers beyond one (4 MB of float32 besides the latents' size).
MIN_OFFSETS = 1 << 20


class LatentNoise:
    """U(-1/2, 1/2) fields of the latent grids' shapes, from ``generator`` on ``device``."""

    def __init__(
        self,
        shapes: Sequence[Sequence[int]],
        generator: torch.Generator,
        device: torch.device | str = "cpu",
    ) -> None:
        self.shapes = [tuple(int(n) for n in s) for s in shapes]
        self.sizes = [math.prod(s) for s in self.shapes]
        self.total = sum(self.sizes)
        self.gen = generator
        self.device = torch.device(device)
        self.table: torch.Tensor | None = None
        if self.device.type == "cpu":
            span = self.total + MIN_OFFSETS
            self.table = torch.rand(span, generator=generator).sub_(0.5)

    @property
    def offsets(self) -> int:
        """How many distinct fields the table holds (0: fresh draws)."""
        return 0 if self.table is None else self.table.numel() - self.total + 1

    def draw(self) -> list[torch.Tensor]:
        """One field a level (views of the table on a CPU: read them, never write)."""
        if self.table is None:
            return [
                torch.rand(s, generator=self.gen, device=self.device).sub_(0.5) for s in self.shapes
            ]
        start = int(torch.randint(0, self.offsets, (1,), generator=self.gen))
        out = []
        for size, shape in zip(self.sizes, self.shapes, strict=True):
            out.append(self.table[start : start + size].view(shape))
            start += size
        return out
