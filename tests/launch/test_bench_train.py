"""The train-step benchmark's model-only mode runs on the CPU with the tiny config and reports each part."""

import json

from tests.cli import run_module


def test_bench_train_model_only_reports_parts(tmp_path):
    out = tmp_path / "bench.jsonl"
    result = run_module("launch.bench_train", "--config=configs/tiny.py", "--model_only", "--steps=1", f"--out={out}")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "whole model" in result.stdout and "sum of parts" in result.stdout
    (numbers,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert "step_ms" not in numbers and numbers["model_ms"] > 0
    assert set(numbers["parts"]) == {"tokenizer", "blocks", "head"}
    assert all(part["ms"] > 0 and part["tflop"] > 0 for part in numbers["parts"].values())
    total = sum(part["tflop"] for part in numbers["parts"].values())
    assert abs(total - numbers["model_tflops_per_example"] * numbers["batch"]) < 1e-9
