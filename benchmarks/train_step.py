"""Training step of a small PRN configuration (default ``workflows/demo.yaml``), forward + loss + backward +
Adam step, three variants alternating in one process: NHWC (``channels_last``, the default) against NCHW,
and against NHWC with CoordConv computed the first way (one convolution over ``cat(x, coords)``, kept here
as the baseline) instead of ``CoordConv2d``'s split form. Also prints the memory autograd keeps for
backward in one step (distinct storages of the saved tensors), the activation memory that bounds the batch
size on a GPU.

The random batch and the step are ``benchmarks/model.py``'s (the cost of a step does not depend on the
values), at the given canvas, so no store is needed. Prints seconds per step for each layout and their ratio,
round by round (the machine is shared: compare within a round).

Usage: ``python benchmarks/train_step.py [--config workflows/demo.yaml] [--size 128 160] [--batch 4]
[--classes 7] [--rounds 3] [--steps 8] [--threads 2]``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from model import make_batch, train_step  # benchmarks/model.py (this script's folder is on sys.path)
from prn_model.config import load_config
from prn_model.coordconv import CoordConv2d, add_coords
from prn_model.loss import prn_loss
from prn_model.network import PRN
from prn_model.train import model_config

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
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
    cpu = torch.device("cpu")
    cfg = load_config(args.config)
    torch.manual_seed(0)
    model = PRN(model_config(cfg, args.classes, list(range(args.classes // 2))))
    opt = torch.optim.Adam(model.parameters(), 1e-4)
    x, batch = make_batch(args.batch, *args.size, cpu, classes=args.classes)
    split_forward = CoordConv2d.forward

    def cat_forward(self, x):
        if self.with_coords:
            x = add_coords(x)
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)

    def seconds_per_step(fmt: torch.memory_format, forward=split_forward) -> float:
        CoordConv2d.forward = forward
        model.to(memory_format=fmt)
        step = train_step(model, tuple(t.contiguous(memory_format=fmt) for t in x), batch, opt, None, cpu)
        for _ in range(2):
            step()
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        CoordConv2d.forward = split_forward
        return (time.perf_counter() - t0) / args.steps

    def saved_mib(forward) -> float:
        CoordConv2d.forward = forward
        model.to(memory_format=torch.channels_last)
        storages: dict[int, int] = {}

        def pack(t: torch.Tensor) -> torch.Tensor:
            st = t.untyped_storage()
            storages[st.data_ptr()] = st.nbytes()
            return t

        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            total, _ = prn_loss(model(*(t.contiguous(memory_format=torch.channels_last) for t in x)), batch)
        del total
        CoordConv2d.forward = split_forward
        return sum(storages.values()) / 2**20

    print(f"{args.config}: batch {args.batch} at {tuple(args.size)}, {args.classes} classes, {torch.get_num_threads()} threads")
    split_mib, cat_mib = saved_mib(split_forward), saved_mib(cat_forward)
    print(f"saved for backward: {split_mib:.1f} MiB; CoordConv by cat {cat_mib:.1f} MiB (x{cat_mib / split_mib:.2f})")
    for r in range(args.rounds):
        nchw = seconds_per_step(torch.contiguous_format)
        nhwc = seconds_per_step(torch.channels_last)
        cat = seconds_per_step(torch.channels_last, cat_forward)
        print(f"round {r + 1}: NHWC {nhwc:.3f} s/step; NCHW {nchw:.3f} (x{nchw / nhwc:.2f}); "
              f"NHWC with CoordConv by cat {cat:.3f} (x{cat / nhwc:.2f})", flush=True)


if __name__ == "__main__":
    main()
