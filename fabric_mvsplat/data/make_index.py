"""Write an evaluation index (the original's `assets/evaluation_index_*.json` format) for any converted dataset.

    python -m fabric_mvsplat.data.make_index --root datasets/mine --stage test --context-gap 10 --targets 3 \
        --seed 0 --out datasets/mine/evaluation_index.json

Format: {scene key: {"context": [left, left + gap], "target": [k, l, m]} or null}. The two context frames are
`--context-gap` frames apart (frame = position in the scene's arrays, i.e. in name order for COLMAP data;
the scene's `file_names` map it back to an image); the targets are distinct frames strictly between them,
sorted. A scene too short for the gap gets null (skipped by test mode,
as in the original). Each scene draws from its own generator seeded by (--seed, key), so adding scenes
leaves the other entries unchanged. Use it with `dataset/view_sampler=evaluation
dataset.view_sampler.index_path=OUT`.
"""

import argparse
import json
import zlib
from pathlib import Path

import numpy as np
from tqdm import tqdm

from .chunk_io import ChunkReadError, read_chunk


def scene_frame_counts(stage_dir: Path) -> dict[str, int]:
    """{key: number of frames} for every scene listed in stage_dir/index.json (chunks read one at a time)."""
    stage_dir = Path(stage_dir)
    index_file = stage_dir / "index.json"
    if not index_file.is_file():
        raise FileNotFoundError(f"{index_file} does not exist: expected a converted stage folder "
                                "(NNNNNN.torch chunks + index.json)")
    index = json.loads(index_file.read_text())
    counts: dict[str, int] = {}
    for chunk in tqdm(sorted(set(index.values())), desc=f"reading {stage_dir}", unit="chunk", leave=False):
        try:
            scenes = read_chunk(stage_dir / chunk)
        except ChunkReadError as error:
            raise ValueError(f"{error}: fix or reconvert that chunk first") from None
        counts.update({scene["key"]: len(scene["cameras"]) for scene in scenes if scene.get("key") in index})
    missing = sorted(set(index) - set(counts))
    if missing:
        raise ValueError(f"{index_file} lists scenes that no chunk holds: {missing[:5]}")
    return {key: counts[key] for key in index}


def index_entry(key: str, num_frames: int, gap: int, targets: int, seed: int) -> dict | None:
    if num_frames <= gap:
        return None
    rng = np.random.default_rng([seed, zlib.crc32(key.encode())])
    left = int(rng.integers(0, num_frames - gap))
    between = rng.choice(np.arange(left + 1, left + gap), size=targets, replace=False)
    return {"context": [left, left + gap], "target": sorted(int(i) for i in between)}


def make_index(stage_dir: Path, context_gap: int, targets: int = 3, seed: int = 0) -> dict[str, dict | None]:
    if context_gap < 2:
        raise ValueError(f"--context-gap {context_gap} must be >= 2 (targets lie strictly between the contexts)")
    if not 1 <= targets <= context_gap - 1:
        raise ValueError(f"--targets {targets} must be in [1, {context_gap - 1}]: distinct frames strictly between "
                         f"contexts {context_gap} frames apart")
    return {key: index_entry(key, count, context_gap, targets, seed)
            for key, count in scene_frame_counts(stage_dir).items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fabric_mvsplat.data.make_index", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--root", type=Path, required=True, help="dataset folder holding STAGE/index.json")
    parser.add_argument("--stage", default="test", help="stage folder to index (default: test)")
    parser.add_argument("--context-gap", type=int, required=True, help="frames between the two context views")
    parser.add_argument("--targets", type=int, default=3, help="target views per scene (the original: 3)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, help="JSON file to write (refused if it exists)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --out file")
    args = parser.parse_args(argv)
    try:
        if args.out.exists() and not args.overwrite:
            raise FileExistsError(f"{args.out} exists: choose another --out or pass --overwrite")
        index = make_index(args.root / args.stage, args.context_gap, args.targets, args.seed)
    except (FileNotFoundError, FileExistsError, ValueError) as error:
        parser.exit(2, f"{parser.prog}: error: {error}\n")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    temporary = args.out.with_name(args.out.name + ".partial")
    temporary.write_text(json.dumps(index, indent=1))
    temporary.replace(args.out)
    usable = sum(entry is not None for entry in index.values())
    print(f"wrote {args.out}: {usable} of {len(index)} scenes indexed (null: fewer than {args.context_gap + 1} frames)"
          f"; test with dataset/view_sampler=evaluation dataset.view_sampler.index_path={args.out}")


if __name__ == "__main__":
    main()
