"""The animation benchmark runs on the CPU with a tiny config and reports its numbers."""

import json

from tests.cli import run_module


def test_bench_infer_measures_several_prefix_lengths_on_one_avatar(tmp_path):
    # Layer 1: a cached prefix block, as a fast-animation config would have; layer 0 caches nothing.
    result = run_module(
        "launch.bench_infer",
        "--config=configs/tiny.py",
        "--cross_attn_from_layers=0,1",
        "--frames=2",
        "--warmup=1",
        "--render_size=24",
        f"--json={tmp_path / 'bench.json'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.count("decode + render") == 2 and result.stdout.count("split: decode") == 2, result.stdout
    numbers = json.loads((tmp_path / "bench.json").read_text())
    assert [n["config"]["cross_attn_from_layer"] for n in numbers] == [0, 1]
    for n in numbers:
        assert n["gaussians"] == 2 * 32 * 32 and n["render_size"] == [24, 24]
        assert n["fps"] > 0 and n["decode_ms"] > 0 and n["render_ms"] > 0
        assert abs(n["fps"] - 1e3 / n["frame_ms"]) < 1e-6
    bad = run_module("launch.bench_infer", "--config=configs/tiny.py", "--cross_attn_from_layers=2", "--frames=1")
    assert bad.returncode != 0 and "outside [0, model.depth=2)" in bad.stderr
