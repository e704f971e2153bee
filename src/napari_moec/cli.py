"""``moec``: compress, decompress and inspect volumes from a terminal.

Every user error (bad file, impossible ratio, corrupted .moec) prints one line and exits 2;
``--debug`` shows the traceback instead.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

from . import __version__
from ._io import Volume, read_volume, write_volume
from .api import load
from .config import PRECISIONS, ArchConfig, QuantConfig, RunConfig, TrainConfig
from .errors import MoecError
from .events import Finalizing, Progress, Started
from .training import Compressor

__all__ = ["main"]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moec", description="Mixture-of-Experts neural compression of 3D/4D volumes."
    )
    parser.add_argument("--version", action="version", version=f"moec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)

    c = sub.add_parser("compress", help="compress a TIFF/.npy volume into a .moec file")
    c.add_argument("input", help="input volume (.tif, .tiff or .npy), 3D ZYX or 4D TZYX/CZYX")
    c.add_argument("output", help="output .moec file")
    c.add_argument("--ratio", type=float, required=True, help="target compression ratio")
    c.add_argument(
        "--experts",
        type=int,
        default=None,
        help="number of SIREN experts (default: 2, or 1 where the budget is too small for 2)",
    )
    c.add_argument("--top-k", type=int, default=1, choices=(1, 2), help="experts per voxel")
    c.add_argument("--layers", type=int, default=3, help="sine layers per expert (3)")
    c.add_argument(
        "--w0-first",
        type=float,
        default=None,
        help="first sine layer's frequency factor (default: chosen from the network width)",
    )
    c.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimiser steps")
    c.add_argument("--time-limit", type=float, default=None, help="stop training after SECONDS")
    c.add_argument("--batch-size", type=int, default=TrainConfig.batch_size)
    c.add_argument("--lr", type=float, default=TrainConfig.lr)
    c.add_argument("--balance-weight", type=float, default=TrainConfig.balance_weight)
    c.add_argument("--capacity-factor", type=float, default=TrainConfig.capacity_factor)
    c.add_argument(
        "--freeze-at",
        type=float,
        default=TrainConfig.freeze_router_at,
        help="fraction of the schedule after which the router is frozen",
    )
    c.add_argument("--precision", choices=PRECISIONS, default=QuantConfig.precision)
    c.add_argument("--per-channel", action="store_true", help="one scale per output channel")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument(
        "--threads",
        type=int,
        default=None,
        help="CPU threads (default: all cores; fewer can be faster on a busy machine)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")

    d = sub.add_parser("decompress", help="decode a .moec file to TIFF/.npy")
    d.add_argument("input", help=".moec file")
    d.add_argument("output", help="output .tif or .npy")
    d.add_argument("--labels", help="also write the expert-assignment map here")
    d.add_argument("--roi", help="region, e.g. 10:50,:,0:32 (one start:stop per axis)")
    d.add_argument("--stride", type=int, default=1, help="keep every N-th voxel per axis")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")

    i = sub.add_parser("info", help="print a .moec file's header")
    i.add_argument("input", help=".moec file")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        return {"compress": _compress, "decompress": _decompress, "info": _info}[args.command](args)
    except MoecError as exc:
        if args.debug:
            raise
        print(f"moec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        if args.debug:
            raise
        print(
            f"moec: error: {exc.strerror or exc}: {exc.filename or ''}".rstrip(": "),
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt:
        print("moec: interrupted", file=sys.stderr)
        return 130


def _compress(args) -> int:
    volume = read_volume(args.input)
    train = TrainConfig(
        steps=args.steps,
        time_limit=args.time_limit,
        batch_size=args.batch_size,
        lr=args.lr,
        balance_weight=args.balance_weight,
        capacity_factor=args.capacity_factor,
        freeze_router_at=args.freeze_at,
        seed=args.seed,
    )
    compressor = Compressor(
        volume.array,
        args.ratio,
        axes=volume.axes,
        spacing=volume.spacing,
        unit=volume.unit,
        arch=ArchConfig(
            num_experts=args.experts,
            top_k=args.top_k,
            expert_layers=args.layers,
            w0_first=args.w0_first,
        ),
        train=train,
        quant=QuantConfig(args.precision, per_channel=args.per_channel),
        run=RunConfig(device=args.device, threads=args.threads),
    )
    bar = _ProgressBar(enabled=not args.quiet)
    run = compressor.run()
    try:
        while True:
            event = next(run)
            bar.update(event)
    except StopIteration as done:
        result = done.value
    except KeyboardInterrupt:
        # Ctrl-C once: stop training, keep the best model so far and still write the file.
        compressor.stop()
        bar.note("stopping: keeping the best model so far")
        try:
            while True:
                bar.update(run.send(None))
        except StopIteration as done:
            result = done.value
    bar.close()
    result.save(args.output)
    r = result.report
    print(
        f"{args.output}: {r.file_bytes} bytes (budget {r.budget_bytes}, predicted "
        f"{r.predicted_bytes}), ratio {r.ratio:.1f}x, PSNR {r.psnr:.2f} dB over the "
        f"data range ({r.psnr_dtype:.2f} dB over the dtype max)"
        + (f", SSIM {r.ssim:.4f}" if r.ssim is not None else "")
        + f", {r.steps} steps in {r.seconds:.1f} s on {r.device}"
    )
    return 0


def _decompress(args) -> int:
    compressed = load(args.input)
    h = compressed.header
    array = compressed.decode(roi=args.roi, stride=args.stride, device=args.device)
    spacing = None
    if h.spacing:
        spacing = tuple(s * args.stride for s in h.spacing)
    write_volume(args.output, Volume(array, h.axes, spacing, h.unit))
    if args.labels:
        labels = compressed.expert_labels(roi=args.roi, stride=args.stride, device=args.device)
        write_volume(args.labels, Volume(labels, h.axes, spacing, h.unit))
    print(f"{args.output}: {array.shape} {array.dtype}")
    return 0


def _info(args) -> int:
    info = load(args.input).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    m, q, t = info["model"], info["quantization"], info["training"]
    print(f"file        {args.input}: {info['file_bytes']} bytes, ratio {info['ratio']}x")
    print(f"volume      {info['axes']} {info['shape']} {info['dtype']}, range {info['range']}")
    if info["spacing"]:
        print(f"spacing     {info['spacing']} {info['unit'] or ''}".rstrip())
    print(
        f"model       {m['num_experts']} experts (top-{m['top_k']}), width "
        f"{m['hidden_features']}, {m['expert_layers']} layers each, router width "
        f"{m['gate_hidden']}, w0 {m['w0']}"
    )
    print(
        f"weights     {q['precision']}{' per-channel' if q['per_channel'] else ''}"
        f"{', entropy coded' if q['entropy_coded'] else ''}"
    )
    if t:
        psnr = "not stored" if t.get("psnr") is None else f"{t['psnr']} dB (data range)"
        print(
            f"training    {t.get('steps')} steps, {t.get('seconds')} s on {t.get('device')}, "
            f"PSNR {psnr}"
        )
    else:
        print("training    no summary stored (left out to give its ~25 bytes to the weights)")
    return 0


class _ProgressBar:
    """A one-line terminal progress bar on stderr (no dependency, quiet when not a TTY)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.interactive = sys.stderr.isatty()
        self.last = 0.0

    def update(self, event) -> None:
        if not self.enabled:
            return
        if isinstance(event, Started):
            m = event.model
            self._line(
                f"training {event.num_parameters} parameters (width {m.hidden_features}, "
                f"{m.num_experts} experts) for a {event.budget_nbytes}-byte budget on "
                f"{event.device}",
                final=True,
            )
        elif isinstance(event, Progress):
            now = time.monotonic()
            if (
                now - self.last < (0.2 if self.interactive else 10.0)
                and event.step < event.total_steps
            ):
                return
            self.last = now
            frac = event.step / event.total_steps
            bar = "#" * int(30 * frac)
            load = "/".join(f"{x:.2f}" for x in event.expert_load)
            self._line(
                f"[{bar:<30}] {event.step}/{event.total_steps} PSNR~{event.psnr:.2f} dB "
                f"load {load} {event.elapsed:.0f}s ETA {event.eta:.0f}s {event.phase}"
            )
        elif isinstance(event, Finalizing):
            self._line("quantizing, entropy coding and measuring the file...", final=True)

    def note(self, text: str) -> None:
        self._line(text, final=True)

    def _line(self, text: str, final: bool = False) -> None:
        if self.interactive:
            sys.stderr.write("\r\x1b[2K" + text + ("\n" if final else ""))
        else:
            sys.stderr.write(text + "\n")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled and self.interactive:
            sys.stderr.write("\n")


if __name__ == "__main__":
    sys.exit(main())
