"""Speed benchmark for the U-Nets: `python -m minimagen.tools.benchmark [--scenario base32] [--steps 10]`.

Prints one JSON line per scenario with
    params                 parameter count
    train_step_s           median seconds of forward + MSE loss + backward + AdamW step (after warm-up);
                           *_min_s fields give the fastest step (less affected by other jobs on the machine)
    sample_step_s          median seconds of one classifier-free-guidance denoising step for ONE image:
                           the conditional and unconditional rows batched into one forward of batch 2
    train_gflop / sample_gflop   FLOPs per step counted by torch.utils.flop_counter.FlopCounterMode
                           (convs, matmuls and attention; the CPU flash-attention formula is registered here)
    train_gflops / sample_gflops achieved GFLOP/s (counted FLOPs / step seconds, median over steps)
    matmul_gflops          GFLOP/s of an n^3 matmul in the benchmark's dtype (CPU: fp32, n=1024, same threads;
                           GPU: bf16, n=4096), probed right before every timed step (median;
                           matmul_gflops_min_max shows how loaded the machine was)
    train_efficiency / sample_efficiency   median over steps of achieved / the probe just before it
    peak_rss_mib           peak resident memory of this process so far (CUDA: also peak allocated)
    load_avg_1min_before_after   the OS load average: above --threads means other jobs shared the cores
The machine may be shared: pairing every step with its own probe keeps the ratio meaningful under load;
still repeat runs (`--repeat`) before believing a number. `--profile ROWS` prints a torch.profiler table of
one training step (where the time goes) and, on CPU, adds a `profile` field: that step's milliseconds in dense
ops (convolutions, matmuls, attention: the counted FLOPs), the optimizer and everything else, and the
efficiency it would reach if everything else took no time (an upper bound for these dense kernels).

Scenario `base32` is the reference: base U-Net at 32x32, width 64, multipliers (1, 2, 4), 2 ResBlocks per
level, self-attention (keys/values also see the text) at 16 and 8, 4 heads of 64, text 32 tokens x 512 with
16 valid, batch 8, fp32.

GPU mode: `python -m minimagen.tools.benchmark --device cuda` runs the same scenarios under bf16 autocast (`--dtype`
fp16 / fp32 to change; fp16 adds a GradScaler as training does), against a bf16 matmul probe, and reports
peak_cuda_mib; `--compile` times the torch.compile'd U-Net (compilation happens in the warm-up steps).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import (FlopCounterMode, register_flop_formula, sdpa_backward_flop_count,
                                      sdpa_flop_count)

from minimagen.networks.unet import UNet, count_parameters, unet_config


@dataclass
class Scenario:
    preset: str  # UNET_PRESETS name
    batch: int  # training batch size
    text_len: int  # tokens per caption (no padding beyond this)
    valid_tokens: int  # tokens that are real (the rest masked)


SCENARIOS = {
    "base32": Scenario("base32", batch=8, text_len=32, valid_tokens=16),
    "base-tiny": Scenario("base-tiny", batch=8, text_len=16, valid_tokens=8),
    "sr-tiny": Scenario("sr-tiny", batch=4, text_len=16, valid_tokens=8),
    "sr-last-tiny": Scenario("sr-last-tiny", batch=4, text_len=16, valid_tokens=8),
}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class MatmulProbe:
    """fp32 GFLOP/s of an n x n x n matmul, the machine's practical peak for dense math. Called right before
    every timed step, so the workload and the reference are measured under the same load (shared machine)."""

    def __init__(self, device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024, reps: int = 3):
        g = torch.Generator().manual_seed(0)
        self.a, self.b = (torch.randn(n, n, generator=g).to(device, dtype) for _ in range(2))
        self.device, self.n, self.reps = device, n, reps

    def __call__(self) -> float:
        self.a @ self.b  # untimed: touch the memory
        synchronize(self.device)
        start = time.perf_counter()
        for _ in range(self.reps):
            self.a @ self.b
        synchronize(self.device)
        return self.reps * 2 * self.n ** 3 / (time.perf_counter() - start) / 1e9  # n^3 multiply-adds = 2 n^3 FLOPs


def timed_steps(fn, steps: int, warmup: int, device: torch.device, probe: MatmulProbe):
    """Wall seconds of `steps` calls of fn (after `warmup` untimed ones), each preceded by a matmul probe."""
    for _ in range(warmup):
        fn()
    synchronize(device)
    seconds, peaks = [], []
    for _ in range(steps):
        peaks.append(probe())
        start = time.perf_counter()
        fn()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds, peaks


def summarise(prefix: str, flop: int, seconds: list[float], peaks: list[float]) -> dict:
    """Median/min seconds, achieved GFLOP/s, and efficiency = median over steps of achieved / probe."""
    achieved = [flop / s / 1e9 for s in seconds]
    return {f"{prefix}_step_s": round(statistics.median(seconds), 4),
            f"{prefix}_step_min_s": round(min(seconds), 4),
            f"{prefix}_gflop": round(flop / 1e9, 3),
            f"{prefix}_gflops": round(statistics.median(achieved), 1),
            f"{prefix}_efficiency": round(statistics.median(a / p for a, p in zip(achieved, peaks)), 3)}


# FlopCounterMode knows the CUDA attention kernels but (torch 2.13) not the CPU flash kernel, so attention
# would count as 0 FLOPs on CPU. Register the same formulas it uses for the CUDA kernels.
_CPU_FLASH = torch.ops.aten._scaled_dot_product_flash_attention_for_cpu
if _CPU_FLASH.default not in torch.utils.flop_counter.flop_registry:
    @register_flop_formula(_CPU_FLASH)
    def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)  # the counter passes shapes, not tensors

    @register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
    def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                                 **kwargs) -> int:
        return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def count_flops(fn) -> int:
    with FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def make_inputs(config, batch: int, text_len: int, valid: int, device, generator):
    S = config.image_size
    x = torch.randn(batch, config.in_channels, S, S, generator=generator).to(device)
    inputs = dict(
        timesteps=torch.randint(0, 1000, (batch,), generator=generator).to(device),
        text_embeds=torch.randn(batch, text_len, config.text_embed_dim, generator=generator).to(device),
        text_mask=(torch.arange(text_len)[None, :] < valid).expand(batch, -1).to(device),
    )
    if config.lowres_cond:
        inputs["lowres_image"] = torch.randn(batch, config.in_channels, S, S, generator=generator).to(device)
        inputs["noise_level"] = torch.randint(0, 1000, (batch,), generator=generator).to(device)
    return x, inputs


def to_format(t: torch.Tensor, channels_last: bool) -> torch.Tensor:
    return t.contiguous(memory_format=torch.channels_last) if channels_last and t.dim() == 4 else t


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def run_scenario(name: str, args) -> dict:
    sc, device = SCENARIOS[name], torch.device(args.device)
    dtype_name = args.dtype or ("bf16" if device.type == "cuda" else "fp32")
    dtype = DTYPES[dtype_name]
    autocast = lambda: torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32)  # noqa: E731
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    torch.manual_seed(0)  # parameter init
    config = unet_config(sc.preset)
    model = UNet(config).to(device=device, memory_format=fmt)
    with torch.no_grad():  # perturb the zero-initialised convs: exact zeros are not what a trained net computes
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 1e-3)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=args.fused_adamw)
    net = torch.compile(model) if args.compile else model
    g = torch.Generator().manual_seed(0)
    x, inputs = make_inputs(config, sc.batch, sc.text_len, sc.valid_tokens, device, g)
    x = to_format(x, args.channels_last)
    inputs = {k: to_format(v, args.channels_last) for k, v in inputs.items()}
    target = to_format(torch.randn(x.shape, generator=g).to(device), args.channels_last)
    drop = torch.rand(sc.batch, generator=g).to(device) < 0.1

    def train_step(net=net):
        with autocast():
            loss = F.mse_loss(net(x, drop_text=drop, **inputs).float(), target)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        optimizer.zero_grad(set_to_none=True)

    # CFG for one image: row 0 conditional, row 1 unconditional (drop_text), one batched forward
    pair = {k: v[:1].expand(2, *v.shape[1:]).contiguous() for k, v in inputs.items()}
    pair = {k: to_format(v, args.channels_last) for k, v in pair.items()}
    x_pair = to_format(x[:1].expand(2, -1, -1, -1).contiguous(), args.channels_last)
    cfg_drop = torch.tensor([False, True], device=device)

    def sample_step(net=net):
        with torch.inference_mode(), autocast():
            eps_cond, eps_uncond = net(x_pair, drop_text=cfg_drop, **pair).chunk(2)
            return eps_uncond + args.guidance_scale * (eps_cond - eps_uncond)  # w*eps_c + (1-w)*eps_u (eq. 2)

    load_before = os.getloadavg()[0]
    probe = MatmulProbe(device, dtype, n=4096 if device.type == "cuda" else 1024)
    train_s, train_peaks = timed_steps(train_step, args.steps, args.warmup, device, probe)
    sample_s, sample_peaks = timed_steps(sample_step, args.steps, args.warmup, device, probe)
    result = dict(scenario=name, preset=sc.preset, device=str(device), dtype=dtype_name,
                  compiled=args.compile, threads=torch.get_num_threads(), channels_last=args.channels_last, batch=sc.batch, params=count_parameters(model))
    train_flop = count_flops(lambda: train_step(model))
    result.update(summarise("train", train_flop, train_s, train_peaks))
    result.update(summarise("sample", count_flops(lambda: sample_step(model)), sample_s, sample_peaks))
    result["matmul_gflops"] = round(statistics.median(train_peaks + sample_peaks), 1)
    result["matmul_gflops_min_max"] = [round(min(train_peaks + sample_peaks), 1),
                                       round(max(train_peaks + sample_peaks), 1)]
    result["peak_rss_mib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
    result["load_avg_1min_before_after"] = [round(load_before, 2), round(os.getloadavg()[0], 2)]  # > threads: shared
    if device.type == "cuda":
        result["gpu"] = torch.cuda.get_device_name(device)
        result["peak_cuda_mib"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    if args.profile:
        from torch.profiler import ProfilerActivity, profile
        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
        peak = probe()
        with profile(activities=activities) as prof:
            train_step()
        print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.profile))
        if device.type == "cpu":  # on a GPU the CPU times measure the launches, not the kernels
            result["profile"] = time_by_kind(prof.key_averages(), train_flop, peak)
    return result


# Ops that do the counted FLOPs (their self time includes oneDNN's own reorders); everything else is FLOP-free.
DENSE_OPS = {"aten::mkldnn_convolution", "aten::convolution_backward", "aten::mm", "aten::addmm", "aten::bmm",
             "aten::baddbmm", "aten::_scaled_dot_product_flash_attention_for_cpu",
             "aten::_scaled_dot_product_flash_attention_for_cpu_backward"}
OPTIMIZER_OPS = {"aten::_fused_adamw_", "aten::_foreach_mul_", "aten::_foreach_add_", "aten::_foreach_addcmul_",
                 "aten::_foreach_addcdiv_", "aten::_foreach_lerp_", "aten::_foreach_sqrt", "aten::_foreach_div_"}


def time_by_kind(averages, flop: int, matmul_gflops: float) -> dict:
    """Split one profiled CPU training step into dense (FLOP-counted) ops, the optimizer and the rest, and
    give the efficiency the step would reach if the rest (norms, activations, copies, framework) cost
    nothing: an upper bound for any implementation that keeps the same dense ops."""
    ms = {"dense": 0.0, "optimizer": 0.0, "other": 0.0}
    for event in averages:
        kind = "dense" if event.key in DENSE_OPS else "optimizer" if event.key in OPTIMIZER_OPS else "other"
        ms[kind] += event.self_cpu_time_total / 1e3  # microseconds -> ms
    total = sum(ms.values())
    return {"step_ms": round(total, 1),
            **{f"{kind}_ms": round(v, 1) for kind, v in ms.items()},
            "dense_gflops": round(flop / ms["dense"] / 1e6, 1),  # GFLOP/s = FLOP / (ms * 1e6)
            "matmul_gflops": round(matmul_gflops, 1),
            "efficiency": round(flop / total / 1e6 / matmul_gflops, 3),
            "efficiency_if_other_ops_were_free": round(flop / (ms["dense"] + ms["optimizer"]) / 1e6 / matmul_gflops, 3)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--scenario", default="base32", choices=[*SCENARIOS, "all"])
    parser.add_argument("--steps", type=int, default=10, help="timed steps (median reported); at least 10")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps first")
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, cuda:1, ...")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True,
                        help="NHWC memory format for model and inputs (on the 2-core CPU no consistent difference "
                             "from --no-channels-last was measured)")
    parser.add_argument("--fused-adamw", action=argparse.BooleanOptionalAction, default=True,
                        help="AdamW(fused=True): one kernel for all parameters instead of ~10 ops each")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                        help="autocast dtype of the timed steps and the matmul probe (default: bf16 on cuda, fp32 on cpu)")
    parser.add_argument("--compile", action="store_true", help="time torch.compile(model) (compiles during warm-up)")
    parser.add_argument("--guidance-scale", type=float, default=5.0)
    parser.add_argument("--repeat", type=int, default=1, help="run each scenario this many times")
    parser.add_argument("--profile", type=int, default=0, metavar="ROWS",
                        help="also print a torch.profiler table of one training step with ROWS rows")
    args = parser.parse_args(argv)
    if args.steps < 10:
        parser.error("--steps must be at least 10 (the median of fewer is too noisy on a shared machine)")
    torch.set_num_threads(args.threads)
    names = list(SCENARIOS) if args.scenario == "all" else [args.scenario]
    for _ in range(args.repeat):
        for name in names:
            print(json.dumps(run_scenario(name, args)), flush=True)


if __name__ == "__main__":
    main()
