"""`python -m benchmarks.memory_budget` end to end at a tiny size: every part measured, and the memory options
move the bytes of the parts they act on (what the table is read for: which option saves memory where)."""

import json

from benchmarks import memory_budget


def test_memory_budget_attributes_saved_bytes_and_checkpointing_lowers_its_parts(tmp_path, capsys):
    out = tmp_path / "budget.json"
    memory_budget.main(["--image", "32", "--options", "none", "attention+lpips-ckpt", "--precisions", "32-true",
                        "--save", str(out)])
    rows = {row["option"]: row for row in json.loads(out.read_text())["rows"]}
    plain, checkpointed = rows["none"]["saved_bytes_by_part"], rows["attention+lpips-ckpt"]["saved_bytes_by_part"]
    for part in ("backbone+transformer", "cost volume", "U-Nets", "Gaussian adapter", "renderer", "LPIPS"):
        assert plain.get(part, 0) > 0, f"{part}: nothing attributed ({plain})"
    # Checkpointing keeps only the checkpointed blocks' inputs: the parts it wraps save less; the cost volume,
    # computed before any of them, saves the same.
    assert checkpointed["LPIPS"] < plain["LPIPS"] and checkpointed["U-Nets"] < plain["U-Nets"]
    assert checkpointed["cost volume"] == plain["cost volume"]
    assert rows["none"]["tile_intersections"] > 0 and rows["none"]["gsplat_renderer_saved_bytes"] > 0
    assert rows["attention+lpips-ckpt"]["estimate_batch14_bytes"] < rows["none"]["estimate_batch14_bytes"]
    table = out.with_suffix(".md").read_text()
    assert "| 32-true | none |" in table and "| 32-true | attention+lpips-ckpt |" in table
    assert "| 32-true | none |" in capsys.readouterr().out
