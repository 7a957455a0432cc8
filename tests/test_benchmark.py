"""The speed benchmark's arithmetic: FLOP counting (incl. CPU attention), efficiency, the time-by-kind split.

Timings themselves are never asserted (the machine is shared); only that the numbers are computed right.
"""
import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F

from minimagen.tools import benchmark


def test_cpu_flash_attention_flops_are_counted_with_the_attention_formula():
    B, h, N, L, d = 2, 3, 16, 24, 8
    q, k, v = torch.randn(B, h, N, d), torch.randn(B, h, L, d), torch.randn(B, h, L, d)
    mask = torch.ones(B, 1, 1, L, dtype=torch.bool)
    flop = benchmark.count_flops(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=mask))
    assert flop == 2 * (2 * B * h * N * L * d)  # Q K^T and P V: 2 multiply-adds per (query, key, channel)


def test_conv_flops_are_two_per_multiply_add():
    conv = torch.nn.Conv2d(4, 6, 3, padding=1)
    x = torch.randn(2, 4, 5, 5)
    assert benchmark.count_flops(lambda: conv(x)) == 2 * (2 * 5 * 5) * 6 * (4 * 3 * 3)


def test_summarise_reports_median_and_per_step_efficiency():
    out = benchmark.summarise("train", flop=2_000_000_000, seconds=[1.0, 2.0, 4.0], peaks=[4.0, 2.0, 1.0])
    assert out["train_step_s"] == 2.0 and out["train_step_min_s"] == 1.0
    assert out["train_gflops"] == 1.0  # median of 2, 1, 0.5 GFLOP/s
    assert out["train_efficiency"] == 0.5  # median of 2/4, 1/2, 0.5/1


def test_time_by_kind_splits_dense_optimizer_and_other_and_bounds_the_efficiency():
    events = [SimpleNamespace(key="aten::convolution_backward", self_cpu_time_total=600_000.0),  # us
              SimpleNamespace(key="aten::mm", self_cpu_time_total=100_000.0),
              SimpleNamespace(key="aten::_fused_adamw_", self_cpu_time_total=50_000.0),
              SimpleNamespace(key="aten::native_group_norm", self_cpu_time_total=250_000.0)]
    out = benchmark.time_by_kind(events, flop=70_000_000_000, matmul_gflops=200.0)
    assert (out["step_ms"], out["dense_ms"], out["optimizer_ms"], out["other_ms"]) == (1000.0, 700.0, 50.0, 250.0)
    assert out["dense_gflops"] == 100.0  # 70 GFLOP in 0.7 s
    assert out["efficiency"] == pytest.approx(70 / 1.0 / 200)
    assert out["efficiency_if_other_ops_were_free"] == pytest.approx(70 / 0.75 / 200, abs=1e-3)


def test_benchmark_cli_prints_one_json_line_per_run_with_a_consistent_profile(capsys):
    benchmark.main(["--scenario", "base-tiny", "--steps", "10", "--warmup", "1", "--profile", "3"])
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["scenario"] == "base-tiny" and result["params"] > 1_000_000
    assert result["train_gflop"] > result["sample_gflop"] > 0
    for key in ("train_step_s", "sample_step_s", "matmul_gflops", "peak_rss_mib"):
        assert result[key] > 0
    assert 0 < result["train_efficiency"] < 1.5  # a ratio, not a timing assertion
    p = result["profile"]
    assert p["dense_ms"] + p["optimizer_ms"] + p["other_ms"] == pytest.approx(p["step_ms"], abs=0.5)
    assert p["efficiency_if_other_ops_were_free"] >= p["efficiency"]


def test_benchmark_refuses_fewer_than_ten_timed_steps():
    with pytest.raises(SystemExit):
        benchmark.main(["--scenario", "base-tiny", "--steps", "3"])
