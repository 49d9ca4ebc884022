"""The animation benchmark runs on the CPU with a tiny config and reports its numbers."""

import json

from tests.cli import run_module


def test_bench_infer_runs_with_tiny_overrides(tmp_path):
    result = run_module(
        "launch.bench_infer",
        "--config=configs/tiny.py",
        "--config.model.cross_attn_from_layer=1",  # a cached prefix block, as a fast-animation config would have
        "--frames=2",
        "--warmup=1",
        "--render_size=24",
        f"--json={tmp_path / 'bench.json'}",
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert "fps" in result.stdout and "split: decode" in result.stdout
    numbers = json.loads((tmp_path / "bench.json").read_text())
    assert numbers["gaussians"] == 2 * 32 * 32 and numbers["render_size"] == [24, 24]
    assert numbers["config"]["cross_attn_from_layer"] == 1
    assert numbers["fps"] > 0 and numbers["decode_ms"] > 0 and numbers["render_ms"] > 0
    assert abs(numbers["fps"] - 1e3 / numbers["frame_ms"]) < 1e-6


def test_bench_infer_measures_several_prefix_lengths_on_one_avatar(tmp_path):
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
    numbers = json.loads((tmp_path / "bench.json").read_text())
    assert [n["config"]["cross_attn_from_layer"] for n in numbers] == [0, 1]
    assert all(n["fps"] > 0 and n["gaussians"] == 2 * 32 * 32 for n in numbers)
    assert result.stdout.count("decode + render") == 2
    bad = run_module("launch.bench_infer", "--config=configs/tiny.py", "--cross_attn_from_layers=2", "--frames=1")
    assert bad.returncode != 0 and "outside [0, model.depth=2)" in bad.stderr
