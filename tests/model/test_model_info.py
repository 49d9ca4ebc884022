"""launch.model_info: parameter counts against hand counts, XLA FLOPs against the analytic count."""

from __future__ import annotations

from avat3r_jax.model import ModelSettings, abstract_model
from launch import model_info
from tests.model.scene import tiny_config


def test_parameter_counts_match_hand_counts():
    config = tiny_config(cross_attn_from_layer=1)
    counts = model_info.parameter_counts(abstract_model(config)[1])
    w, p, c, f, v = 64, 8, 3 + 4 + 6, config.data.feature_channels, config.data.num_input_views
    assert counts["tokenizer"] == (p * p * c * w + w) + 2 * f + (f * w + w) + v * w
    head_dim = w // config.model.num_heads
    self_attention = (w * 3 * w + 3 * w) + (w * w + w) + 2 * head_dim  # qkv, out, q/k RMS-norm scales
    assert counts["prefix_blocks.self_attention"] == self_attention
    assert counts["blocks.self_attention"] == self_attention
    assert counts["blocks.cross_attention"] == (w * w + w) + (w * 2 * w + 2 * w) + (w * w + w) + 2 * head_dim
    assert counts["blocks.mlp"] == (w * 4 * w + 4 * w) + (4 * w * w + w)
    assert "prefix_blocks.cross_attention" not in counts


def test_xla_flops_agree_with_the_analytic_matmul_count():
    """XLA counts every op; the analytic count only matmuls and convolutions, which dominate."""
    config = tiny_config(cross_attn_from_layer=1, scan_layers=True)  # the FLOP count unrolls the scan
    analytic = sum(model_info.analytic_forward_flops(ModelSettings.from_config(config)).values())
    xla = model_info.xla_forward_flops(config)
    assert analytic <= xla < 1.1 * analytic, (analytic, xla)


def test_report_lists_modules_and_totals():
    text = model_info.report(tiny_config(), memory=False)
    for line in ("tokenizer", "blocks.mlp", "head", "total", "XLA cost analysis"):
        assert line in text
