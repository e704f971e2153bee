"""Paper ablations on one volume at one ratio, every variant at the same byte budget.

Variants (paper §4): the number of experts (1 = a plain SIREN of the same bytes: one expert,
its router has a single output and always weighs it 1), top-1 vs top-2 routing, the balance
loss on/off, the router freeze on/off. Each variant's width is sized by the library to the
same budget, so the comparison is at equal file bytes; the file is saved, reloaded and decoded
from disk as in ``rd.py``. One JSON per variant; existing ones are skipped unless ``--force``.

    python benchmarks/ablations.py --volume hipct --ratio 256 --steps 2000 \\
        --out benchmarks/out/ablations

``--w0-first`` sweeps the first layer's frequency factor ω0 (default: the library's choice
for the network's width); each value is its own run, named ``..._w0f<value>``.

    python benchmarks/ablations.py --volume hipct --ratio 1024 --variants experts2 \\
        --w0-first 5 10 15 20 30
"""

from __future__ import annotations

import argparse
from pathlib import Path

from _common import OUT, SPACING, compress_and_measure, load_volume, provenance, write_json

#: name -> (num_experts, top_k, balance_weight or None = default, freeze_router_at or None)
VARIANTS = {
    "experts1": (1, 1, None, None),
    "experts2": (2, 1, None, None),
    "experts3": (3, 1, None, None),
    "experts4": (4, 1, None, None),
    "experts8": (8, 1, None, None),
    "experts2_top2": (2, 2, None, None),
    "experts4_top2": (4, 2, None, None),
    "experts2_no_balance": (2, 1, 0.0, None),
    "experts2_no_freeze": (2, 1, None, 1.0),
}


def run_name(variant: str, w0_first: float | None) -> str:
    return variant if w0_first is None else f"{variant}_w0f{w0_first:g}"


def run_variant(name: str, vol, args, w0_first: float | None = None) -> dict:
    from napari_moec import TrainConfig

    experts, top_k, balance, freeze = VARIANTS[name]
    defaults = TrainConfig()
    train = TrainConfig(
        steps=args.steps,
        time_limit=args.time_limit,
        seed=args.seed,
        balance_weight=defaults.balance_weight if balance is None else balance,
        freeze_router_at=defaults.freeze_router_at if freeze is None else freeze,
    )
    record = {
        "variant": run_name(name, w0_first),
        "order": list(VARIANTS).index(name),
        "volume": args.volume,
        "shape": list(vol.shape),
        "original_bytes": int(vol.nbytes),
        "target_ratio": args.ratio,
        "budget_bytes": int(vol.nbytes // args.ratio),
        "options": {
            "num_experts": experts,
            "top_k": top_k,
            "balance_weight": train.balance_weight,
            "freeze_router_at": train.freeze_router_at,
            "steps": args.steps,
            "time_limit": args.time_limit,
            "seed": args.seed,
            "precision": args.precision,
            "w0_first": w0_first,
        },
    }
    label = run_name(name, w0_first)
    run = compress_and_measure(
        vol,
        args.ratio,
        path=args.moec_dir / f"ablation_{args.volume}_{args.ratio:g}x_{label}.moec",
        num_experts=experts,
        top_k=top_k,
        train=train,
        precision=args.precision,
        device=args.device,
        spacing=SPACING[args.volume],
        threads=args.threads,
        w0_first=w0_first,
    )
    record["seconds"] = run.seconds
    if run.status != "ok":
        record.update(status=run.status, reason=run.reason)
        return record
    record.update(
        status="ok",
        bytes=run.file_bytes,
        ratio=vol.nbytes / run.file_bytes,
        report=run.compressed.report.to_dict(),
        **run.quality,
    )
    return record


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--volume", default="hipct")
    parser.add_argument("--ratio", type=float, default=256)
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--w0-first", type=float, nargs="+", default=[None])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--time-limit", type=float, default=None)
    parser.add_argument("--precision", default="int8")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads per run")
    parser.add_argument("--out", type=Path, default=OUT / "ablations")
    parser.add_argument("--moec-dir", type=Path, default=OUT / "moec-files")
    parser.add_argument("--force", action="store_true")
    args = parser.parse_args(argv)
    vol = load_volume(args.volume)
    runs = [(name, w0) for name in args.variants for w0 in args.w0_first]
    for name, w0_first in runs:
        label = run_name(name, w0_first)
        path = args.out / f"ablation_{args.volume}_{args.ratio:g}x_{label}.json"
        if path.exists() and not args.force:
            print(f"skip {path} (exists; --force to rerun)")
            continue
        record = run_variant(name, vol, args, w0_first)
        device = record.get("report", {}).get("device", args.device)
        record.update(provenance(device))
        write_json(path, record)
        text = (
            f"{record['psnr']:.2f} dB / {record['ssim']:.3f} ({record['bytes']} B, "
            f"width {record['report']['hidden_features']})"
            if record["status"] == "ok"
            else record["status"]
        )
        print(f"{label:22s} {text}  [{record['seconds']:.0f} s]", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
