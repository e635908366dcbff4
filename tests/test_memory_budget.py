"""`python -m benchmarks.memory_budget` end to end at a tiny size: every part measured, the estimate assembled."""

import json

from benchmarks import memory_budget


def test_memory_budget_attributes_saved_bytes_and_estimates_batch_14(tmp_path, capsys):
    out = tmp_path / "budget.json"
    memory_budget.main(["--image", "32", "--options", "none", "--precisions", "32-true", "--save", str(out)])
    [row] = json.loads(out.read_text())["rows"]
    parts = row["saved_bytes_by_part"]
    for part in ("backbone+transformer", "cost volume", "U-Nets", "Gaussian adapter", "renderer", "LPIPS"):
        assert parts.get(part, 0) > 0, f"{part}: nothing attributed ({parts})"
    assert row["saved_bytes"] == sum(parts.values())
    assert row["tile_intersections"] > 0 and row["gsplat_renderer_saved_bytes"] > 0
    terms = row["estimate_terms"]
    assert row["estimate_batch14_bytes"] == sum(terms.values())
    assert "| 32-true | none |" in out.with_suffix(".md").read_text() and "| 32-true | none |" in capsys.readouterr().out
