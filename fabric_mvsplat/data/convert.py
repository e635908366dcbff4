"""Convert real captures into the chunk format.

    python -m fabric_mvsplat.data.convert realestate10k --cameras RE10K/train --frames FRAMES --out datasets/re10k/train
    python -m fabric_mvsplat.data.convert colmap --model SCENE/sparse/0 --images SCENE/images --key SCENE \
        --out datasets/mine/test

ACID uses the RealEstate10K layout and converter. Each call fills one stage folder
(`train` or `test`) with NNNNNN.torch chunks of about --target-bytes plus index.json.
"""

import argparse
from pathlib import Path

from .chunk_io import TARGET_BYTES_PER_CHUNK
from .convert_colmap import convert_colmap
from .convert_realestate10k import convert_realestate10k


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    re10k = commands.add_parser("realestate10k", help="RealEstate10K / ACID camera .txt files + extracted frames")
    re10k.add_argument("--cameras", type=Path, required=True, help="folder of <key>.txt camera files (one split)")
    re10k.add_argument("--frames", type=Path, required=True, help="folder of <key>/<timestamp>.png|jpg frames")

    colmap = commands.add_parser("colmap", help="COLMAP sparse model(s) + images; repeat the three flags per scene")
    colmap.add_argument("--model", type=Path, action="append", required=True, help="e.g. SCENE/sparse/0")
    colmap.add_argument("--images", type=Path, action="append", required=True, help="e.g. SCENE/images")
    colmap.add_argument("--key", action="append", required=True, help="scene name stored in the chunk")

    for command in (re10k, colmap):
        command.add_argument("--out", type=Path, required=True, help="stage folder to create, e.g. datasets/x/train")
        command.add_argument("--target-bytes", type=int, default=TARGET_BYTES_PER_CHUNK, help="approximate chunk size")
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    if args.command == "realestate10k":
        index = convert_realestate10k(args.cameras, args.frames, args.out, target_bytes=args.target_bytes)
    else:
        index = convert_colmap(args.model, args.images, args.key, args.out, target_bytes=args.target_bytes)
    print(f"wrote {len(index)} scenes in {len(set(index.values()))} chunks + index.json to {args.out}")


if __name__ == "__main__":
    main()
