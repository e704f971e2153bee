"""``moec``: compress, decompress and inspect volumes from a terminal.

Every user error (bad file, impossible ratio, corrupted .moec) prints one line and exits 2;
``--debug`` shows the traceback instead.

``moec compress``'s option flags are not written here: they are built from the ``option()``
declarations of the dataclasses in :data:`~napari_moec.config.OPTION_CONFIGS` (type, default,
range, choices, help; the ``cli`` field names a flag whose spelling differs from the field's),
so an option added there appears here by itself.

Each subcommand is a :class:`Subcommand`: a function that adds its arguments and one that runs
it. To add one, write both and list it in :data:`SUBCOMMANDS`.
"""

from __future__ import annotations

import argparse
import json
import sys
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from . import __version__
from ._io import Volume, read_volume, write_volume
from ._terminal import RunProgress, stop_on_interrupt
from .api import load
from .config import OPTION_CONFIGS, option_fields
from .errors import ConfigError, MoecError
from .generators import drain
from .run_options import configs_from_options
from .tiled import cli as tiled_cli
from .training import Compressor

__all__ = ["SUBCOMMANDS", "Subcommand", "add_option_flags", "configs_from", "main"]


@dataclass(frozen=True)
class Subcommand:
    """One ``moec`` subcommand: its arguments and what it does (returns the exit status)."""

    name: str
    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


# -- options from their declarations -------------------------------------------------------
def option_flags(f) -> list[str]:
    """The flags of an option field: its ``cli`` name (if any), then ``--field-name``."""
    canonical = "--" + f.name.replace("_", "-")
    alias = f.metadata["option"]["cli"]
    return [alias, canonical] if alias and alias != canonical else [canonical]


def _base_type(annotation) -> tuple[type, bool]:
    """``int | None`` -> ``(int, True)``; ``float`` -> ``(float, False)``."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args:
        return args[0], True
    return annotation, False


def _parser_for(kind: type, allows_auto: bool) -> Callable[[str], object]:
    """Parse a flag's text as ``kind``; "auto" (or "none") means None where that is allowed."""

    def parse(text: str):
        if allows_auto and text.strip().lower() in ("auto", "none"):
            return None
        return kind(text)

    parse.__name__ = kind.__name__  # argparse names it in "invalid int value: 'x'"
    return parse


def _describe(f, meta: dict) -> str:
    """The help line: the declaration's help, the valid range and the default."""
    text = meta["help"]
    lo, hi = meta["lo"], meta["hi"]
    if lo is not None and hi is not None:
        left, right = "(["[not meta["open_lo"]], ")]"[not meta["open_hi"]]
        text += f", in {left}{_number(lo)}, {_number(hi)}{right}"
    elif lo is not None:
        text += f", {'>' if meta['open_lo'] else '>='} {_number(lo)}"
    elif hi is not None:
        text += f", {'<' if meta['open_hi'] else '<='} {_number(hi)}"
    if f.default is None:
        default = f"auto: {meta['auto']}" if meta["auto"] else "none"
    elif isinstance(f.default, bool):
        default = "yes" if f.default else "no"
    else:
        default = _number(f.default) if isinstance(f.default, int | float) else f.default
    return f"{text} (default: {default})".replace("%", "%%")


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


def add_option_flags(parser: argparse.ArgumentParser, configs: dict = OPTION_CONFIGS) -> None:
    """Add one flag per ``option()`` field of ``configs``, grouped by dataclass.

    Flags default to :data:`argparse.SUPPRESS`: an option not given is absent from the parsed
    namespace, so the dataclass's own default applies (declared once, there).
    """
    seen: dict[str, str] = {}
    for cls in configs.values():
        group = parser.add_argument_group(f"{cls.__name__} options", cls.__doc__.split("\n")[0])
        hints = typing.get_type_hints(cls)
        for f in option_fields(cls):
            if f.name in seen:
                raise TypeError(f"option {f.name!r} is declared by {seen[f.name]} and {cls}")
            seen[f.name] = cls.__name__
            meta = f.metadata["option"]
            kind, nullable = _base_type(hints[f.name])
            kwargs: dict = {"dest": f.name, "default": argparse.SUPPRESS}
            kwargs["help"] = _describe(f, meta)
            if kind is bool:
                kwargs["action"] = argparse.BooleanOptionalAction
            else:
                allows_auto = nullable and (meta["auto"] is not None or f.default is None)
                kwargs["type"] = _parser_for(kind, allows_auto)
                if meta["choices"] is not None:
                    kwargs["choices"] = meta["choices"]
                else:
                    kwargs["metavar"] = {int: "N", float: "X"}.get(kind, "VALUE")
            group.add_argument(*option_flags(f), **kwargs)


def configs_from(args: argparse.Namespace, configs: dict = OPTION_CONFIGS) -> dict:
    """The config dataclasses for the options given on the command line, by keyword
    (``{"arch": ArchConfig(...), ...}``); they validate the values (ConfigError). Flags not
    given are absent from ``args`` (SUPPRESS), so the declared defaults apply."""
    return configs_from_options(vars(args), configs=configs)


# -- subcommands ---------------------------------------------------------------------------
def _add_compress(c: argparse.ArgumentParser) -> None:
    c.add_argument("input", help="input volume (.tif, .tiff or .npy), 3D ZYX or 4D TZYX/CZYX")
    c.add_argument("output", help="output .moec file, or a tiled store OUT.ome.zarr / OUT.ozx")
    c.add_argument(
        "--ratio",
        type=float,
        default=None,
        help="target compression ratio (>= 1); with --psnr, the least ratio allowed (default 8)",
    )
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    add_option_flags(c)
    tiled_cli.add_compress_arguments(c)


def _compress(args: argparse.Namespace) -> int:
    if args.ratio is None and getattr(args, "target_psnr", None) is None:
        raise ConfigError("give --ratio R or --psnr P (the size or the quality of the file)")
    if tiled_cli.wants_tiled(args.output):
        return tiled_cli.compress(args, configs_from(args))
    volume = read_volume(args.input)
    compressor = Compressor(
        volume.array,
        args.ratio,
        axes=volume.axes,
        spacing=volume.spacing,
        unit=volume.unit,
        **configs_from(args),
    )
    progress = RunProgress(enabled=not args.quiet)
    told = False

    def on_event(event) -> None:
        nonlocal told
        if interrupted.is_set() and not told:
            progress.note("stopping: keeping the best model so far (Ctrl-C again to abort)")
            told = True
        progress.update(event)

    with progress, stop_on_interrupt(compressor) as interrupted:
        result = drain(compressor.run(), on_event)
    result.save(args.output)
    r = result.report
    print(
        f"{args.output}: {r.file_bytes} bytes (budget {r.budget_bytes}, predicted "
        f"{r.predicted_bytes}), ratio {r.ratio:.1f}x, PSNR {r.psnr:.2f} dB over the "
        f"data range ({r.psnr_dtype:.2f} dB over the dtype max)"
        + (f", SSIM {r.ssim:.4f}" if r.ssim is not None else "")
        + f", {r.steps} steps in {r.seconds:.1f} s on {r.device}"
        + (" (stopped early: best model so far)" if r.stopped_early else "")
        + ("" if compressor.target_psnr is None else f"; target PSNR {compressor.target_psnr:g} dB")
    )
    if r.max_error is not None:
        print(
            f"max error   <= {r.max_error:g} (guaranteed), measured {r.max_error_measured:g}; "
            f"the correction takes {r.correction_bytes} of the {r.file_bytes} bytes "
            f"(model within {r.budget_bytes} B, file at {r.ratio:.1f}x)"
        )
    return 0


def _add_decompress(d: argparse.ArgumentParser) -> None:
    d.add_argument("input", help=".moec file or tiled store")
    d.add_argument("output", help="output .tif or .npy (a tiled store also writes .zarr)")
    d.add_argument("--labels", help="also write the expert-assignment map here")
    d.add_argument("--roi", help="region, e.g. 10:50,:,0:32 (one start:stop per axis)")
    d.add_argument("--stride", type=int, default=1, help="keep every N-th voxel per axis")
    d.add_argument("--device", default=None, help="cpu or cuda (default: cpu)")


def _decompress(args: argparse.Namespace) -> int:
    if tiled_cli.is_store(args.input):
        return tiled_cli.decompress(args)
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


def _add_info(i: argparse.ArgumentParser) -> None:
    i.add_argument("input", help=".moec file or tiled store")
    i.add_argument("--json", action="store_true", help="machine-readable output")
    tiled_cli.add_info_arguments(i)


def _info(args: argparse.Namespace) -> int:
    if tiled_cli.is_store(args.input):
        return tiled_cli.info(args)
    info = load(args.input).info()
    if args.json:
        print(json.dumps(info, indent=2))
        return 0
    q, t = info["quantization"], info["training"]
    print(f"file        {args.input}: {info['file_bytes']} bytes, ratio {info['ratio']}x")
    print(f"volume      {info['axes']} {info['shape']} {info['dtype']}, range {info['range']}")
    if info["spacing"]:
        print(f"spacing     {info['spacing']} {info['unit'] or ''}".rstrip())
    print(f"model       {info['model_text']}")
    if info["max_error"] is not None:
        print(
            f"max error   <= {info['max_error']:g} (guaranteed), correction "
            f"{info['correction_bytes']} bytes"
        )
    print(
        f"weights     {q['precision']}{' per-channel' if q['per_channel'] else ''}"
        f"{', entropy coded' if q['entropy_coded'] else ''}"
    )
    if t:
        psnr = "not stored" if t.get("psnr") is None else f"{t['psnr']} dB (data range)"
        if t.get("target") is not None:
            psnr += f", promised >= {t['target']:g} dB (made for --psnr {t['target']:g})"
        print(
            f"training    {t.get('steps')} steps, {t.get('seconds')} s on {t.get('device')}, "
            f"PSNR {psnr}"
        )
    else:
        print("training    no summary stored (left out to give its ~25 bytes to the weights)")
    return 0


#: ``moec``'s subcommands, in ``--help`` order.
SUBCOMMANDS: list[Subcommand] = [
    Subcommand(
        "compress",
        "compress a volume into a .moec file, or tile by tile into a store (.ome.zarr, .ozx)",
        _add_compress,
        _compress,
    ),
    Subcommand(
        "decompress",
        "decode a .moec file or a tiled store to TIFF/.npy (or .zarr from a store)",
        _add_decompress,
        _decompress,
    ),
    Subcommand("info", "print what a .moec file or a tiled store holds", _add_info, _info),
]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moec", description="Mixture-of-Experts neural compression of 3D/4D volumes."
    )
    parser.add_argument("--version", action="version", version=f"moec {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True)
    for command in SUBCOMMANDS:
        command.add_arguments(sub.add_parser(command.name, help=command.help))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    run = next(c.run for c in SUBCOMMANDS if c.name == args.command)
    try:
        return run(args)
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


if __name__ == "__main__":
    sys.exit(main())
