"""Training step of a small PRN configuration (default ``workflows/demo.yaml``): memory layout NCHW against
NHWC (``channels_last``), alternating in one process, forward + loss + backward + Adam step.

A batch of random inputs and targets with the Batch contract's shapes and dtypes (``prn_model.data``) at
the given canvas, so no store is needed; the cost of a step does not depend on the values. Prints seconds per
step for each layout and their ratio, round by round (the machine is shared: compare within a round).

Usage: ``python benchmarks/train_step.py [--config workflows/demo.yaml] [--size 128 160] [--batch 4]
[--classes 7] [--rounds 3] [--steps 8] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def random_batch(n: int, h: int, w: int, classes: int, stride: int = 4, seed: int = 0) -> dict[str, torch.Tensor]:
    """Inputs and targets of the Batch contract, random values (``(n, ·, h, w)``)."""
    g = torch.Generator().manual_seed(seed)
    hs, ws = -(-h // stride), -(-w // stride)
    return {
        "image": torch.rand(n, 3, h, w, generator=g),
        "instance": torch.rand(n, 7, h, w, generator=g),
        "base_semantic": torch.rand(n, classes, hs, ws, generator=g).softmax(1),
        "semantic": torch.randint(0, classes, (n, h, w), generator=g),
        "center": torch.rand(n, 1, h, w, generator=g),
        "center_offset": torch.randn(n, 2, h, w, generator=g) * 10,
        "box_offset": torch.rand(n, 4, h, w, generator=g) * 20,
        "foreground": torch.rand(n, h, w, generator=g) > 0.5,
        "semantic_weight": torch.ones(n, h, w),
        "center_weight": torch.ones(n, h, w),
        "offset_weight": torch.ones(n, h, w),
        "foreground_weight": torch.ones(n, h, w),
        "valid": torch.ones(n, h, w, dtype=torch.bool),
    }


def main() -> None:
    from prn_model.config import load_config
    from prn_model.loss import prn_loss
    from prn_model.network import PRN
    from prn_model.train import loss_weights, model_config

    ap = argparse.ArgumentParser()
    ap.add_argument("--config", default=str(REPO / "workflows" / "demo.yaml"))
    ap.add_argument("--size", type=int, nargs=2, default=(128, 160))
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--classes", type=int, default=7, help="the demo's synthetic scenes have 7")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    cfg = load_config(args.config)
    things = list(range(args.classes // 2))
    torch.manual_seed(0)
    model = PRN(model_config(cfg, args.classes, things))
    weights = loss_weights(cfg)
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    batch = random_batch(args.batch, *args.size, args.classes)

    def set_layout(fmt: torch.memory_format) -> None:
        model.to(memory_format=fmt)
        for k in ("image", "instance", "base_semantic"):
            batch[k] = batch[k].contiguous(memory_format=fmt)

    def seconds_per_step() -> float:
        def step() -> None:
            out = model(batch["image"], batch["instance"], batch["base_semantic"])
            total, _ = prn_loss({k: v.float() for k, v in out.items()}, batch, weights)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()

        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        return (time.perf_counter() - t0) / args.steps

    print(f"{args.config}: batch {args.batch} at {tuple(args.size)}, {args.classes} classes, {torch.get_num_threads()} threads")
    for r in range(args.rounds):
        set_layout(torch.contiguous_format)
        nchw = seconds_per_step()
        set_layout(torch.channels_last)
        nhwc = seconds_per_step()
        print(f"round {r + 1}: NCHW {nchw:.3f} s/step, NHWC {nhwc:.3f} s/step, NCHW/NHWC = {nchw / nhwc:.2f}x", flush=True)


if __name__ == "__main__":
    main()
