"""Quantization, entropy coding and the prototype file of a GridMoE, with exact byte counts.

File layout (little-endian; what the product would store)::

    0   4   magic b"MoEG"
    4   1   u8 version (2; version 1 lacked the keep_axis byte)
    5   1   u8 ndim (3 or 4)
    6   2n  u16 shape[n]
    .   1   u8 dtype code (0 uint8, 1 uint16, 2 int16, 3 float32)
    .   8   f32 vmin, f32 vmax  (intensity range; training range is [-1, 1])
    .   14  u8 num_levels, first_level, kernel (0 linear, 1 cubic), hidden, num_experts,
            top_k, expert_layers, gate_hidden, act (0 relu, 1 gelu, 2 sin),
            context (0 factorized, 1 checkerboard), grid_per_expert (0/1), gate_coords (0/1),
            synth (0 ReLU-MLP experts, 1 SIREN experts = design c), keep_axis
    --- payload ---
    .   2   f16 latent step s (1.0 unless the budget fitter had to coarsen the latents)
    .   2T  f16 scale of each MLP tensor (T tensors, GridMoE.synth.named_parameters order)
    .   S+T u8 entropy-model byte of each latent symbol group, then of each MLP tensor
            (napari_moec.entropy: 0 uniform, 1..127 geometric, 128..254 Gaussian spreads).
            A level has 1 group (factorized), or with context "cb" and >= 512 latents 6:
            its even-parity latents, then the odd ones in each of 5 context buckets (bucket =
            sum of |q| of the 2*ndim face neighbours, all even: model.context_index)
    .   2   u16 radius R (every integer is in [-R, R])
    .   4k  ANS stream (constriction, u32 words): latent groups (level by level, C order
            within a group), then MLP tensors. Decoding a "cb" level takes two passes: even
            latents, then (contexts now known) the odd ones, both fully vectorised.
    end 4   u32 CRC-32 of everything before

Shapes of every tensor follow from the header (``interp.level_shapes``), so the payload has no
per-tensor lengths. Latent value = integer * s; MLP weight = integer * scale.
The header here is ~30 bytes (3D); the study reserves 60 bytes for the product's JSON header.

Decoding is bit-exact: integers come from the ANS stream with tables built by
``napari_moec.entropy.model_table`` (+,-,*,/,sqrt only).
"""

from __future__ import annotations

import math
import struct
import zlib

import constriction
import numpy as np
import torch

from napari_moec import entropy
from napari_moec.quantize import quantize as _quantize_weight

from .model import N_CTX, GridConfig, GridMoE, context_index

__all__ = ["HEADER_RESERVE", "pack", "unpack", "fit_budget", "load_model"]

MAGIC = b"MoEG"
HEADER_RESERVE = 60  # bytes the study keeps for the product's header + CRC
_DTYPES = ["uint8", "uint16", "int16", "float32"]
_KERNELS = ["linear", "cubic"]
_ACTS = ["relu", "gelu", "sin"]
_CONTEXTS = ["none", "cb"]
_SYNTHS = ["mlp", "siren"]


def _use_cb(model_or_grids) -> list[bool]:
    return list(model_or_grids.grids.use_cb)


def latent_groups(q: np.ndarray, spatial: int, use_cb: bool) -> list[np.ndarray]:
    """Boolean masks of the symbol groups of one level, in coding order."""
    if not use_cb:
        return [np.ones(q.shape, dtype=bool)]
    ctx = context_index(torch.from_numpy(q.astype(np.int64)), spatial, True).numpy()
    return [ctx == k for k in range(N_CTX)]


def _encode(tensors: list[np.ndarray], models: list[int], radius: int) -> bytes:
    coder = constriction.stream.stack.AnsCoder()
    for q, m in zip(reversed(tensors), reversed(models)):
        if q.size:
            sym = (q.ravel().astype(np.int64) + radius).astype(np.int32)
            coder.encode_reverse(sym, _cat(m, radius))
    return coder.get_compressed().astype("<u4").tobytes()


def _cat(m: int, radius: int):
    return constriction.stream.model.Categorical(entropy.model_table(m, radius), perfect=False)


def _choose(q: np.ndarray, radius: int) -> int:
    return entropy.choose_model(q, radius) if q.size else 0


def quantize_latents(model: GridMoE, zero_k: int = 0, step: float = 1.0) -> list[np.ndarray]:
    """Integers of every level: ``round(y / s)``, then the ``zero_k`` nonzero integers of
    smallest ``|y / s|`` (over all levels) set to 0 -- the budget fitter's fine rate knob."""
    step = float(np.float16(step))
    vals = [y.detach().numpy().astype(np.float64) / step for y in model.grids.latents]
    out = [np.rint(v).astype(np.int32) for v in vals]
    if zero_k > 0:
        mags = np.concatenate([np.abs(v).ravel() for v in vals])
        flat = np.concatenate([q.ravel() for q in out])
        cand = np.flatnonzero(flat)
        order = cand[np.argsort(mags[cand], kind="stable")][:zero_k]
        flat[order] = 0
        sizes = np.cumsum([q.size for q in out])[:-1]
        out = [p.reshape(q.shape) for p, q in zip(np.split(flat, sizes), out)]
    return out


def quantize_mlp(model: GridMoE, step: float = 1.0):
    """(integers, float16-exact scales) of the MLP tensors, nominal 8 bit * ``step``."""
    ints, scales = [], []
    for _, p in model.synth.named_parameters():
        q, s = _quantize_weight(p.detach().float(), 8, False, step)
        ints.append(q.numpy().astype(np.int32))
        scales.append(float(s.reshape(-1)[0]))
    return ints, scales


def _header(cfg: GridConfig, dtype: str, vmin: float, vmax: float) -> bytes:
    shape = cfg.shape
    return (MAGIC + bytes([2, len(shape)]) + struct.pack(f"<{len(shape)}H", *shape)
            + bytes([_DTYPES.index(dtype)]) + struct.pack("<ff", vmin, vmax)
            + bytes([cfg.num_levels, cfg.first_level, _KERNELS.index(cfg.kernel), cfg.hidden,
                     cfg.num_experts, cfg.top_k, cfg.expert_layers, cfg.gate_hidden,
                     _ACTS.index(cfg.act), _CONTEXTS.index(cfg.context),
                     cfg.grid_per_expert, cfg.gate_coords, _SYNTHS.index(cfg.synth),
                     cfg.keep_axis]))


def pack(model: GridMoE, dtype: str, vmin: float, vmax: float, *, mlp_step: float = 1.0,
         zero_k: int = 0, lat_step: float = 1.0) -> tuple[bytes, dict]:
    """The whole file and a breakdown of its bytes."""
    lat = quantize_latents(model, zero_k, lat_step)
    mlp, scales = quantize_mlp(model, mlp_step)
    spatial = len(model.cfg.shape)
    groups = []
    for q, cb in zip(lat, _use_cb(model)):
        groups += [q[m] for m in latent_groups(q, spatial, cb)]
    tensors = groups + mlp
    radius = max(1, max(int(np.abs(t).max(initial=0)) for t in tensors))
    models = [_choose(t, radius) for t in tensors]
    stream = _encode(tensors, models, radius)
    head = _header(model.cfg, dtype, vmin, vmax)
    side = (struct.pack("<e", lat_step) + struct.pack(f"<{len(scales)}e", *scales)
            + bytes(models) + struct.pack("<H", radius))
    body = head + side + stream
    data = body + struct.pack("<I", zlib.crc32(body))
    # Split of the stream between latents and MLP (ideal bits under the chosen models).
    lat_bits = sum(_bits(t, m, radius) for t, m in zip(groups, models))
    mlp_bits = sum(_bits(t, m, radius) for t, m in zip(mlp, models[len(groups):]))
    info = {"file": len(data), "header": len(head) + 4, "side": len(side),
            "stream": len(stream), "latent_bits": lat_bits, "mlp_bits": mlp_bits,
            "nonzero_latents": int(sum((t != 0).sum() for t in lat)), "radius": radius,
            "mlp_step": mlp_step, "zero_k": zero_k, "lat_step": float(np.float16(lat_step))}
    return data, info


def _bits(q: np.ndarray, model: int, radius: int) -> float:
    table = entropy.model_table(model, radius)
    return float(-np.log2(table[q.ravel() + radius]).sum())


def unpack(data: bytes):
    """File -> (GridConfig, dtype, vmin, vmax, latent float tensors, MLP state dict)."""
    if zlib.crc32(data[:-4]) != struct.unpack("<I", data[-4:])[0]:
        raise ValueError("CRC mismatch")
    if data[:4] != MAGIC:
        raise ValueError("bad magic")
    ndim = data[5]
    pos = 6
    shape = struct.unpack_from(f"<{ndim}H", data, pos)
    pos += 2 * ndim
    dtype = _DTYPES[data[pos]]
    vmin, vmax = struct.unpack_from("<ff", data, pos + 1)
    pos += 9
    ncfg = 14 if data[4] >= 2 else 13  # version 1 files (before keep_axis) had 13
    c = bytes(data[pos:pos + ncfg]) + (b"" if ncfg == 14 else bytes([8]))
    pos += ncfg
    cfg = GridConfig(shape=tuple(shape), num_levels=c[0], first_level=c[1],
                     kernel=_KERNELS[c[2]], hidden=c[3], num_experts=c[4], top_k=c[5],
                     expert_layers=c[6], gate_hidden=c[7], act=_ACTS[c[8]],
                     context=_CONTEXTS[c[9]], grid_per_expert=c[10], gate_coords=c[11],
                     synth=_SYNTHS[c[12]], keep_axis=c[13])
    with torch.device("meta"):
        skeleton = GridMoE(cfg)
    names = [(n, tuple(p.shape)) for n, p in skeleton.synth.named_parameters()]
    lshapes = cfg.latent_shapes
    use_cb = list(skeleton.grids.use_cb)
    (lat_step,) = struct.unpack_from("<e", data, pos)
    pos += 2
    scales = struct.unpack_from(f"<{len(names)}e", data, pos)
    pos += 2 * len(names)
    nt = sum(N_CTX if cb else 1 for cb in use_cb) + len(names)
    models = list(data[pos:pos + nt])
    pos += nt
    (radius,) = struct.unpack_from("<H", data, pos)
    pos += 2
    words = np.frombuffer(data[pos:-4], dtype="<u4").astype(np.uint32)
    coder = constriction.stream.stack.AnsCoder(words)
    mi = iter(models)

    def pull(count):
        m = next(mi)
        if not count:
            return np.zeros(0, np.int64)
        return coder.decode(_cat(m, radius), count).astype(np.int64) - radius

    spatial = len(shape)
    latents = []
    for s, cb in zip(lshapes, use_cb):
        q = np.zeros(s, dtype=np.int64)
        if not cb:
            q[...] = pull(math.prod(s)).reshape(s)
        else:  # pass 1: even parity; pass 2: odd, per context bucket
            masks = latent_groups(q, spatial, True)
            q[masks[0]] = pull(int(masks[0].sum()))
            masks = latent_groups(q, spatial, True)  # contexts from the decoded even latents
            for m in masks[1:]:
                q[m] = pull(int(m.sum()))
        latents.append(torch.from_numpy(q.astype(np.float32) * np.float32(lat_step)))
    state = {n: torch.from_numpy(pull(math.prod(s)).reshape(s).astype(np.float32)
                                 * np.float32(sc)) for (n, s), sc in zip(names, scales)}
    if not coder.is_empty():
        raise ValueError("trailing data in the ANS stream")
    return cfg, dtype, vmin, vmax, latents, state


def load_model(data: bytes) -> tuple[GridMoE, dict]:
    """A GridMoE whose latents and MLP hold exactly the file's values."""
    cfg, dtype, vmin, vmax, latents, state = unpack(data)
    model = GridMoE(cfg)
    with torch.no_grad():
        for p, v in zip(model.grids.latents, latents):
            p.copy_(v)
        model.synth.load_state_dict(state)
    return model, {"dtype": dtype, "vmin": vmin, "vmax": vmax}


def fit_budget(model: GridMoE, budget: int, dtype: str, vmin: float, vmax: float, evaluate,
               mlp_steps=(1.0, 1.5, 2.0, 3.0)):
    """Best file whose payload fits ``budget - HEADER_RESERVE`` bytes; returns (psnr, data, info).

    For each MLP step (nominal int8 * step): plain rounding if it fits; else the fewest
    smallest-magnitude nonzero latents zeroed (bisection on their count) so it fits exactly;
    if zeroing half of them is not enough, the finest latent step s > 1 that fits.
    ``evaluate(data)`` returns the PSNR of a file; the best candidate wins.
    """
    def payload(info):
        return info["file"] - info["header"]

    limit = budget - HEADER_RESERVE
    results, per_ms = [], []
    for ms in mlp_steps:
        n_before = len(results)
        best = pack(model, dtype, vmin, vmax, mlp_step=ms)
        if payload(best[1]) > limit:
            nnz = best[1]["nonzero_latents"]
            lo, hi = 0, nnz // 2
            cand = pack(model, dtype, vmin, vmax, mlp_step=ms, zero_k=hi)
            if payload(cand[1]) <= limit:
                best = cand
                while hi - lo > max(1, nnz // 2000):
                    mid = (lo + hi) // 2
                    cand = pack(model, dtype, vmin, vmax, mlp_step=ms, zero_k=mid)
                    if payload(cand[1]) <= limit:
                        hi, best = mid, cand
                    else:
                        lo = mid
            else:
                lo, hi, best = 0.0, 6.0, None
                for _ in range(14):
                    mid = (lo + hi) / 2
                    cand = pack(model, dtype, vmin, vmax, mlp_step=ms, lat_step=2.0**mid)
                    if payload(cand[1]) <= limit:
                        hi, best = mid, cand
                    else:
                        lo = mid
                if best is None:
                    continue
        data, info = best
        results.append((evaluate(data), data, info))
        if info["zero_k"] == 0 and info["lat_step"] == 1.0 and payload(info) < 0.97 * limit:
            # Slack left: a finer latent step s < 1 spends it (the float latents are closer to
            # round(y/s)*s); kept only if the decoded PSNR says it helps.
            lo, hi, fine = 0.5, 1.0, None
            for _ in range(6):
                mid = (lo + hi) / 2
                cand = pack(model, dtype, vmin, vmax, mlp_step=ms, lat_step=mid)
                if payload(cand[1]) <= limit:
                    hi, fine = mid, cand
                else:
                    lo = mid
            if fine is not None:
                results.append((evaluate(fine[0]), *fine))
        per_ms.append(max(r[0] for r in results[n_before:]))
        if len(per_ms) >= 2 and per_ms[-1] < per_ms[-2]:
            break  # a coarser MLP step stopped paying off
    if not results:
        raise RuntimeError("nothing fits the budget")
    return max(results, key=lambda r: r[0])
