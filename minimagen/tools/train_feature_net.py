"""Train the small domain feature net (data/feature_net.py) behind the fidelity metric (data/fidelity.py), measure it.

    python -m minimagen.tools.train_feature_net --domain shapes --out minimagen/assets/feature_net_shapes.safetensors
    python -m minimagen.tools.train_feature_net --domain shapes --measure-only   # tables for the shipped net

Training (CPU, fp32, one thread, deterministic for a given --seed): every step renders a fresh labelled
batch of random scenes at one of the domain's `train_sizes` (16 / 32 / 64 px: the net must read the images
of every cascade stage), resizes it with `resize_for_features`, shifts it by up to `--max-shift` pixels
(light augmentation: generated objects are never exactly on the grid) and minimises the mean cross-entropy
over all attribute heads with AdamW and a cosine learning-rate decay. Afterwards every feature is scaled to
unit variance on real 32-px renders, and the reference spread for `diversity` is measured (`calibrate`).
The shipped nets: 600 steps of 64 renders, 100 % held-out accuracy on every attribute; 160 s (shapes) and
300 s (scenes, whose ray-cast renders cost ~1.2 ms each) on one thread of the shared 2-core machine under
load; two runs with the same seed gave bit-identical weights. 2.2 MB each (fp32 safetensors).

Measurement (`--measure`, on by default): attribute accuracy on held-out renders; real-vs-real FD (two
independent sets of renders) for n in --sizes over --seeds seeds; and FD(real, corrupted real) for every
corruption in CORRUPTIONS at --n images, mean +- std over seeds. Prints markdown tables; --report writes JSON.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

from minimagen.data.feature_net import (FeatureNet, FeatureNetConfig, get_feature_domain, resize_for_features,
                                        save_feature_net, weights_path)
from minimagen.data.fidelity import (FeatureExtractor, add_noise, color_shift, frechet_distance, gaussian_blur,
                                     mean_pairwise_distance, saturate)

CORRUPTIONS = {  # name -> (images [N, 3, H, W], torch.Generator) -> corrupted images; levels in rising order
    "noise 0.02": lambda x, g: add_noise(x, 0.02, g), "noise 0.05": lambda x, g: add_noise(x, 0.05, g),
    "noise 0.1": lambda x, g: add_noise(x, 0.1, g), "noise 0.2": lambda x, g: add_noise(x, 0.2, g),
    "blur 0.5": lambda x, g: gaussian_blur(x, 0.5), "blur 1": lambda x, g: gaussian_blur(x, 1.0),
    "blur 2": lambda x, g: gaussian_blur(x, 2.0),
    "color shift 0.05": lambda x, g: color_shift(x, 0.05), "color shift 0.1": lambda x, g: color_shift(x, 0.1),
    "color shift 0.2": lambda x, g: color_shift(x, 0.2),
    "saturate 1.25": lambda x, g: saturate(x, 1.25), "saturate 1.5": lambda x, g: saturate(x, 1.5),
    "saturate 2": lambda x, g: saturate(x, 2.0),
    "blank (grey 0.5)": lambda x, g: torch.full_like(x, 0.5),
    "uniform noise": lambda x, g: torch.rand(x.shape, generator=g),
}


def random_shift(images: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by (dx, dy) in [-max_shift, max_shift] pixels, edges replicated."""
    if max_shift == 0:
        return images
    n, _, h, w = images.shape
    m = max_shift
    padded = F.pad(images, (m, m, m, m), mode="replicate")              # [N, 3, H + 2m, W + 2m]
    offsets = torch.randint(0, 2 * m + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, oy:oy + h, ox:ox + w] for i, (oy, ox) in enumerate(offsets.tolist())])


def losses_and_accuracy(net: FeatureNet, images: torch.Tensor, labels: torch.Tensor):
    """(mean cross-entropy over heads, per-head accuracy [K]) of a labelled batch."""
    logits = net(images)                                                 # K x [N, classes_k]
    loss = sum(F.cross_entropy(lg, labels[:, k]) for k, lg in enumerate(logits)) / len(logits)
    acc = torch.stack([(lg.argmax(1) == labels[:, k]).float().mean() for k, lg in enumerate(logits)])
    return loss, acc


def train(domain_name: str, steps: int, batch_size: int, lr: float, seed: int, max_shift: int,
          log_every: int = 100) -> FeatureNet:
    domain = get_feature_domain(domain_name)
    torch.manual_seed(seed)                                              # the initial weights
    net = FeatureNet(FeatureNetConfig(num_classes=tuple(c for _, c in domain.attributes)))
    opt = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=1e-4)
    rng, gen = np.random.default_rng([seed, 1]), torch.Generator().manual_seed(seed)
    size = net.config.input_size
    start = time.time()
    for step in range(steps):
        for group in opt.param_groups:                                   # cosine decay to 0 over `steps`
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        render_size = domain.train_sizes[int(rng.integers(len(domain.train_sizes)))]
        images, labels = domain.render_batch(batch_size, render_size, rng)
        images = random_shift(resize_for_features(images, size), max_shift, gen)
        loss, acc = losses_and_accuracy(net, images, labels)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % log_every == 0 or step == steps - 1:
            print(f"step {step:5d}  loss {loss.item():.4f}  mean head accuracy {acc.mean().item():.4f}  "
                  f"render {render_size:3d} px  {time.time() - start:6.1f} s", flush=True)
    return net.eval()


@torch.no_grad()
def calibrate(net: FeatureNet, domain_name: str, n: int = 2000, seed: int = 12345) -> None:
    """Set feature_std (every feature has unit variance on real 32-px renders; a floor of 1 % of the median
    std keeps a feature that never varies on real renders from being divided by ~0) and reference_spread
    (the mean pairwise distance of those renders' features, the unit of `diversity`)."""
    images, _ = get_feature_domain(domain_name).render_batch(n, net.config.input_size, np.random.default_rng(seed))
    std = net.raw_features(images).double().std(dim=0)                   # [feature_dim]
    net.feature_std.copy_(std.clamp_min(0.01 * float(std.median())))
    net.reference_spread.fill_(mean_pairwise_distance(net.features(images)))


@torch.no_grad()
def measure(extractor: FeatureExtractor, sizes: list[int], seeds: int, n: int, image_size: int) -> dict:
    domain = get_feature_domain(extractor.domain)

    def real(count, seed):
        return domain.render_batch(count, image_size, np.random.default_rng([seed, 777]))

    images, labels = real(1000, 999)
    _, acc = losses_and_accuracy(extractor.net, images, labels)
    names = [a.split()[-1] for a, _ in domain.attributes]                # "top left color" -> "color"
    report = {"accuracy": {k: float(np.mean([a for a, m in zip(acc.tolist(), names) if m == k]))
                           for k in dict.fromkeys(names)}}
    print("held-out accuracy (32 px renders, 1000 scenes):", report["accuracy"])
    table = {}
    for size in sizes:
        values = [frechet_distance(extractor.features(real(size, 2 * s)[0]),
                                   extractor.features(real(size, 2 * s + 1)[0])) for s in range(seeds)]
        table[size] = (float(np.mean(values)), float(np.std(values)))
    report["real_vs_real"] = table
    print(f"\nreal vs real ({image_size} px), {seeds} seeds\n| n | FD mean | FD std |\n|---|---|---|")
    for size, (m, s) in table.items():
        print(f"| {size} | {m:.3f} | {s:.3f} |")
    rows = {"real (another seed)": []} | {name: [] for name in CORRUPTIONS}
    for s in range(seeds):
        fa = extractor.features(real(n, 2 * s)[0])
        b = real(n, 2 * s + 1)[0]
        rows["real (another seed)"].append(frechet_distance(fa, extractor.features(b)))
        for name, corrupt in CORRUPTIONS.items():
            rows[name].append(frechet_distance(fa, extractor.features(corrupt(b, torch.Generator().manual_seed(s)))))
    report["corruptions"] = {k: (float(np.mean(v)), float(np.std(v))) for k, v in rows.items()}
    print(f"\nFD(real, corrupted real of another seed), n = {n}, {image_size} px, {seeds} seeds\n"
          "| corruption | FD mean | FD std |\n|---|---|---|")
    for name, (m, s) in report["corruptions"].items():
        print(f"| {name} | {m:.3f} | {s:.3f} |")
    families = {}                                                        # "noise 0.1" -> family "noise"
    for name in CORRUPTIONS:
        family, _, level = name.rpartition(" ")
        if family and level.replace(".", "").isdigit():
            families.setdefault(family, []).append(name)
    report["monotone_seeds"] = {}
    for family, names in families.items():
        values = np.array([rows["real (another seed)"]] + [rows[k] for k in names])  # [1 + levels, seeds]
        report["monotone_seeds"][family] = int(np.all(np.diff(values, axis=0) > 0, axis=0).sum())
    print(f"seeds (of {seeds}) where FD rises strictly from real through every level:", report["monotone_seeds"])
    return report


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--domain", default="shapes", help="a registered feature domain (fidelity.py)")
    parser.add_argument("--out", default=None,
                        help="weights path; default minimagen/assets/feature_net_DOMAIN.safetensors")
    parser.add_argument("--steps", type=int, default=600, help="optimizer steps")
    parser.add_argument("--batch-size", type=int, default=64, help="renders per step")
    parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate (cosine decay)")
    parser.add_argument("--max-shift", type=int, default=1, help="random translation in pixels at 32 px")
    parser.add_argument("--seed", type=int, default=0, help="weights init, scenes and augmentation")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the shared machine: 1)")
    parser.add_argument("--calibration-images", type=int, default=2000,
                        help="real renders that set the feature scale and the diversity unit")
    parser.add_argument("--measure", action=argparse.BooleanOptionalAction, default=True,
                        help="print accuracy, FD stability and corruption tables after training")
    parser.add_argument("--measure-only", action="store_true", help="skip training; measure the net at --out")
    parser.add_argument("--sizes", type=int, nargs="+", default=[100, 250, 500, 1000, 2000],
                        help="n of the real-vs-real stability table")
    parser.add_argument("--seeds", type=int, default=5, help="seeds per table entry")
    parser.add_argument("--n", type=int, default=500, help="images per set in the corruption table")
    parser.add_argument("--image-size", type=int, default=32, help="render size of the measured images")
    parser.add_argument("--report", default=None, help="also write the measurements as JSON here")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = args.out or weights_path(args.domain)
    if not args.measure_only:
        start = time.time()
        net = train(args.domain, args.steps, args.batch_size, args.lr, args.seed, args.max_shift)
        calibrate(net, args.domain, args.calibration_images)
        seconds = time.time() - start
        command = ("python -m minimagen.tools.train_feature_net " + " ".join(argv if argv is not None else
                                                                           sys.argv[1:]))
        save_feature_net(net, out, args.domain, extra={"trained_with": command.strip(), "seconds": round(seconds),
                                                       "threads": args.threads})
        print(f"trained in {seconds:.0f} s; saved {out}")
    if args.measure or args.measure_only:
        report = measure(FeatureExtractor.from_pretrained(args.domain, out), args.sizes, args.seeds, args.n,
                         args.image_size)
        if args.report:
            with open(args.report, "w") as f:
                json.dump(report, f, indent=1)


if __name__ == "__main__":
    main()
