"""``vlmtune checkpoint …``: convert, merge and inspect model directories.

    vlmtune checkpoint to-hf /models/InternVL2-2B /models/InternVL2-2B-native
    vlmtune checkpoint to-hf work_dirs/cfg/iter_640.pth OUT --base /models/InternVL2-2B
    vlmtune checkpoint to-official merged/ OUT --like /models/InternVL2-2B
    vlmtune checkpoint merge BASE ADAPTER OUT --max-shard-size 2GB
    vlmtune checkpoint inspect DIR

Every output is written to ``OUT.tmp`` and renamed when complete; an existing ``OUT`` is
refused without ``--force``.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlmtune checkpoint",
                                     description="convert / merge / inspect model directories")
    sub = parser.add_subparsers(dest="action", required=True)

    def outputs(p: argparse.ArgumentParser) -> None:
        p.add_argument("--force", action="store_true", help="replace an existing OUT")
        p.add_argument("--max-shard-size", default="2GB", help="e.g. 2GB, 500MB (default 2GB)")

    hf = sub.add_parser("to-hf", help="official InternVL2 dir or xtuner .pth → "
                                      "transformers-native")
    hf.add_argument("src", type=Path)
    hf.add_argument("out", type=Path)
    hf.add_argument("--base", type=Path, help="the official checkpoint an xtuner .pth was "
                                              "trained from")
    hf.add_argument("--official", action="store_true",
                    help="xtuner: write the official layout instead of transformers-native")
    hf.add_argument("--lora-alpha", type=float, default=256.0,
                    help="xtuner LoRA alpha (not stored in the .pth; tutorial: 256)")
    hf.add_argument("--lora-r", type=int, default=None,
                    help="xtuner LoRA rank; read from the tensor shapes, checked if given")
    hf.add_argument("--device", default="auto", help="where the LoRA update is computed")
    outputs(hf)
    off = sub.add_parser("to-official", help="transformers-native → official InternVL2 layout")
    off.add_argument("src", type=Path)
    off.add_argument("out", type=Path)
    off.add_argument("--like", type=Path, required=True,
                     help="the official checkpoint the model was tuned from")
    outputs(off)
    merge = sub.add_parser("merge", help="base + peft LoRA adapter → merged, shard by shard")
    merge.add_argument("base", type=Path)
    merge.add_argument("adapter", type=Path)
    merge.add_argument("out", type=Path)
    merge.add_argument("--device", default="auto", help="auto (CUDA when available), cpu, cuda")
    outputs(merge)
    ins = sub.add_parser("inspect", help="say what a directory is")
    ins.add_argument("path", type=Path)
    ins.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def main(argv: list[str]) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("vlmtune").setLevel(logging.INFO)
    from vlmtune.errors import VlmtuneError

    try:
        print(_run(args))
    except VlmtuneError as err:
        print(f"vlmtune: error: {err}", file=sys.stderr)
        return 2
    return 0


def _run(args: argparse.Namespace) -> str:
    from vlmtune.convert import inspect as inspection
    from vlmtune.errors import CheckpointError

    if args.action == "inspect":
        desc = inspection.describe(args.path)
        return json.dumps(desc.as_dict(), indent=2) if args.json else inspection.render(desc)
    if args.action == "merge":
        from vlmtune.convert.merge import merge_checkpoint

        result = merge_checkpoint(args.base, args.adapter, args.out, force=args.force,
                                  max_shard_size=args.max_shard_size, device=args.device)
        return (f"merged {result.merged} LoRA updates and {result.replaced} saved modules → "
                f"{result.out} ({len(result.shards)} shard(s))")
    if args.action == "to-official":
        from vlmtune.convert.official import to_official_dir

        out = to_official_dir(args.src, args.out, like=args.like, force=args.force,
                              max_shard_size=args.max_shard_size)
        return f"wrote the official InternVL layout → {out}"
    desc = inspection.describe(args.src)
    layout = desc.layout
    if layout == "xtuner pth":
        if args.base is None:
            raise CheckpointError(f"{args.src} is an xtuner checkpoint: pass --base "
                                  "OFFICIAL_BASE, the official checkpoint it was trained from")
        from vlmtune.convert.xtuner import import_xtuner

        out = import_xtuner(args.src, args.out, base=args.base, official=args.official,
                            force=args.force, lora_alpha=args.lora_alpha, lora_r=args.lora_r,
                            max_shard_size=args.max_shard_size, device=args.device)
        kind = "official" if args.official else "transformers-native"
        return f"applied {args.src} to {args.base} → {out} ({kind})"
    if layout != "official":
        hint = {"hf-native": f"it is transformers-native already (back to the official layout: "
                             f"vlmtune checkpoint to-official {args.src} OUT --like BASE)",
                "peft adapter": f"merge it with: {desc.convert_with}"}.get(
            layout, "`vlmtune checkpoint inspect` says more")
        raise CheckpointError(f"{args.src} is {layout!r}, not an official InternVL checkpoint "
                              f"or an xtuner .pth; {hint}")
    from vlmtune.convert.official import to_native_dir

    out = to_native_dir(args.src, args.out, force=args.force, max_shard_size=args.max_shard_size)
    return f"converted {args.src} → {out} (transformers-native)"
