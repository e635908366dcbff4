"""Convert real captures into the chunk format.

    python -m fabric_mvsplat.data.convert realestate10k --cameras RE10K/train --frames FRAMES --out datasets/re10k/train
    python -m fabric_mvsplat.data.convert colmap --model SCENE/sparse --images SCENE/images --key SCENE \
        --out datasets/mine/test
    python -m fabric_mvsplat.data.convert colmap --model A/sparse --images A/images --key A \
        --model B/sparse --images B/images --key B --root datasets/mine --test-keys B

ACID uses the RealEstate10K layout and converter. Each call fills one stage folder (`--out`, e.g.
`.../train` or `.../test`), or with `--root` and a split both `train/` and `test/`, with NNNNNN.torch
chunks of about --target-bytes plus index.json. Output appears only once complete; an existing,
non-empty output folder is refused. Errors print one line and exit with status 2.
"""

import argparse
import sys
import warnings
from pathlib import Path

from .chunk_io import TARGET_BYTES_PER_CHUNK
from .convert_colmap import Destination, convert_colmap
from .convert_realestate10k import convert_realestate10k


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fabric_mvsplat.data.convert", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    re10k = commands.add_parser("realestate10k", help="RealEstate10K / ACID camera .txt files + extracted frames")
    re10k.add_argument("--cameras", type=Path, required=True, help="folder of <key>.txt camera files (one split)")
    re10k.add_argument("--frames", type=Path, required=True, help="folder of <key>/<timestamp>.png|jpg frames")
    re10k.add_argument("--out", type=Path, required=True, help="stage folder to create, e.g. datasets/x/train")

    colmap = commands.add_parser("colmap", help="COLMAP sparse model(s) + images; repeat the three flags per scene")
    colmap.add_argument("--model", type=Path, action="append", required=True,
                        help="SCENE/sparse (the model with the most registered images is used) or SCENE/sparse/N")
    colmap.add_argument("--images", type=Path, action="append", required=True,
                        help="the (undistorted) images the model was made from, e.g. SCENE/images")
    colmap.add_argument("--key", action="append", required=True, help="scene name stored in the chunk")
    where = colmap.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="one stage folder to create, e.g. datasets/mine/test")
    where.add_argument("--root", type=Path, help="dataset folder: writes ROOT/train and ROOT/test (needs a split)")
    split = colmap.add_mutually_exclusive_group()
    split.add_argument("--test-keys", nargs="+", help="with --root: these scenes -> test/, the others -> train/")
    split.add_argument("--test-fraction", type=float,
                       help="with --root: each scene's last fraction of frames -> test/, the rest -> train/")
    scaling = colmap.add_mutually_exclusive_group()
    scaling.add_argument("--scale", type=float, default=1.0, help="multiply every camera translation by this")
    scaling.add_argument("--fit-near-far", type=float, nargs=2, metavar=("NEAR", "FAR"),
                         help="scale each scene so that its 1st-percentile depth is NEAR (warns if FAR is too near)")

    for command in (re10k, colmap):
        command.add_argument("--target-bytes", type=int, default=TARGET_BYTES_PER_CHUNK, help="approximate chunk size")
    return parser


def one_line_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"warning: {message}", file=sys.stderr if file is None else file)


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = one_line_warning
            run(args)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog} {args.command}: error: {error}\n")


def run(args: argparse.Namespace) -> None:
    if args.command == "realestate10k":
        index = convert_realestate10k(args.cameras, args.frames, args.out, target_bytes=args.target_bytes)
        print(f"wrote {len(index)} scenes in {len(set(index.values()))} chunks + index.json to {args.out}")
    else:
        destination = Destination(out=args.out, root=args.root, test_keys=args.test_keys,
                                  test_fraction=args.test_fraction)
        convert_colmap(args.model, args.images, args.key, destination, scale=args.scale,
                       fit_near_far=args.fit_near_far, target_bytes=args.target_bytes)


if __name__ == "__main__":
    main()
