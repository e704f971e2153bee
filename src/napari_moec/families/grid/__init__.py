"""The grid family: entropy-coded multi-resolution latent grids under routed ReLU-MLP experts.

Ported and hardened from ``benchmarks/research/grid_experts`` (REPORT.md there). Modules:

config    GridConfig (torch-free), level shapes, the stored network layout
context   checkerboard context slots (numpy and torch from one function)
payload   the payload bytes (torch-free): pack_payload / unpack_payload, all checks
interp    separable linear / cubic B-spline interpolation, any region at any stride
model     GridModel: latent grids, router, experts, decoder; dropless dispatch
rate      the Laplace rate proxy and the lambda controller
fit       quantization and the exact fit of a payload to a byte budget
train     GridTrainer: a step-based schedule, checkpoints, the best payload kept
sampling  strided subsets (default) or boxes of large volumes, per step
noise     the uniform noise standing in for rounding while latents train (a table's windows)
decode    decode_region (values and labels) in bounded-memory blocks
sizing    auto_config: a config for a shape and a payload budget
codec     CODEC, the contract's PayloadCodec (the header's "m", the payload; no network code)
family    FAMILY, the contract's ModelFamily (thin adapters over the modules above)

Importing this package imports no network code; ``FAMILY`` is loaded on first access, so
``format.py`` can read ``codec`` without it.
"""

from __future__ import annotations

__all__ = ["FAMILY"]


def __getattr__(name: str):
    if name == "FAMILY":
        from .family import FAMILY

        return FAMILY
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
