"""PRN forward+backward cost per 640×800 sample (the paper's training size, §4.2): milliseconds and peak
memory, for ResNet-50 and a small depth, eager against ``torch.compile``, on the device present.

Everything runs in this one process; each compiled figure is printed as a ratio against the eager figure of
the same depth, measured with eager and compiled steps alternating. On CUDA, peak memory is
``torch.cuda.max_memory_allocated``; on the CPU it is the process's peak resident set (VmHWM, reset through
/proc/self/clear_refs before each step), which includes the Python process and torch itself. On a GPU, ``--bf16-batch 16`` adds
samples/s at batch 16 under bf16 autocast. Not run by CI.

    .venv/bin/python benchmarks/model.py                       # cuda if present, else cpu
    .venv/bin/python benchmarks/model.py --depths 18 --iters 2 --no-compile
"""

from __future__ import annotations

import argparse
import statistics
import time
from contextlib import nullcontext
from pathlib import Path

import torch

from prn_model.loss import prn_loss
from prn_model.network import PRN, PRNConfig, count_parameters

NUM_CLASSES = 133  # COCO panoptic


def reset_peak(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    else:
        try:
            Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS (Linux ≥ 4.0)
        except OSError:
            pass


def read_peak(device: torch.device) -> float:
    """Peak memory in MiB since :func:`reset_peak`."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() / 2**20
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


def make_batch(b: int, h: int, w: int, device: torch.device, classes: int = NUM_CLASSES) -> tuple[tuple, dict]:
    """Random model inputs ``(image, instance, base_semantic)`` and targets of the Batch contract's shapes."""
    g = torch.Generator().manual_seed(0)
    x = (
        torch.rand(b, 3, h, w, generator=g) * 255,
        torch.cat((torch.rand(b, 1, h, w, generator=g), torch.randn(b, 6, h, w, generator=g) * 30), 1),
        torch.softmax(torch.randn(b, classes, h // 4, w // 4, generator=g), 1),
    )
    batch = {
        "semantic": torch.randint(0, classes, (b, h, w), generator=g),
        "center": torch.rand(b, 1, h, w, generator=g),
        "center_offset": torch.randn(b, 2, h, w, generator=g) * 20,
        "box_offset": torch.rand(b, 4, h, w, generator=g) * 50,
        "foreground": torch.randint(0, 2, (b, h, w), generator=g),
        "semantic_weight": torch.ones(b, h, w),
        "center_weight": torch.ones(b, h, w),
        "offset_weight": torch.ones(b, h, w),
        "foreground_weight": torch.ones(b, h, w),
        "valid": torch.ones(b, h, w, dtype=torch.bool),
    }
    return tuple(t.to(device) for t in x), {k: v.to(device) for k, v in batch.items()}


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def train_step(model, x, batch, opt, amp: torch.dtype | None, device: torch.device):
    def step() -> None:
        ctx = torch.autocast(device.type, dtype=amp) if amp is not None else nullcontext()
        with ctx:
            out = model(*x)
            total, _ = prn_loss(out, batch)
        opt.zero_grad(set_to_none=True)
        total.backward()
        opt.step()

    return step


def timed(step, device: torch.device) -> tuple[float, float]:
    """(seconds, peak MiB) of one ``step()``."""
    reset_peak(device)
    t0 = time.perf_counter()
    step()
    sync(device)
    return time.perf_counter() - t0, read_peak(device)


def run(args: argparse.Namespace) -> None:
    device = torch.device(args.device if args.device != "auto" else ("cuda" if torch.cuda.is_available() else "cpu"))
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"cpu ({torch.get_num_threads()} threads)"
    h, w = args.size
    print(f"device {name}; torch {torch.__version__}; input {h}×{w}, {NUM_CLASSES} classes, fp32 unless stated")
    print(f"median of {args.iters} interleaved steps per mode (eager and compiled alternate, so a drifting "
          "machine load hits both alike)")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    modes = [("eager", None, args.batch)]
    if args.compile:
        modes.append(("compiled", None, args.batch))
    if device.type == "cuda" and args.bf16_batch:
        modes.append(("eager bf16", torch.bfloat16, args.bf16_batch))
        if args.compile:
            modes.append(("compiled bf16", torch.bfloat16, args.bf16_batch))
    for depth in args.depths:
        torch.manual_seed(0)
        model = PRN(PRNConfig(num_classes=NUM_CLASSES, depth=depth)).to(device)
        if args.channels_last:
            model = model.to(memory_format=torch.channels_last)
        print(f"\nResNet-{depth}: {count_parameters(model):,} parameters")
        opt = torch.optim.Adam(model.parameters(), lr=1e-4)
        compiled = torch.compile(model) if args.compile else None
        steps, first, times, peaks = {}, {}, {}, {}
        for label, amp, b in modes:
            x, batch = make_batch(b, h, w, device)
            steps[label] = train_step(compiled if label.startswith("compiled") else model, x, batch, opt, amp, device)
            first[label], _ = timed(steps[label], device)  # compiles the compiled modes
            for _ in range(max(0, args.warmup - 1)):
                timed(steps[label], device)
            times[label], peaks[label] = [], 0.0
        for _ in range(args.iters):
            for label in steps:
                sec, peak = timed(steps[label], device)
                times[label].append(sec)
                peaks[label] = max(peaks[label], peak)
        base: dict[str, float] = {}
        for label, amp, b in modes:
            sec = statistics.median(times[label])
            ms = 1e3 * sec / b
            ratio = base.setdefault(label.replace("compiled", "eager"), ms) / ms
            print(
                f"  {label:<14} batch {b:>2}: fwd+bwd+step {ms:9.1f} ms/sample, {b / sec:7.2f} samples/s, "
                f"peak {peaks[label]:8.0f} MiB, first call {first[label]:6.1f} s, speed-up vs eager {ratio:4.2f}×"
            )
        del steps, compiled
        if device.type == "cuda":
            torch.cuda.empty_cache()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--depths", type=int, nargs="+", default=[50, 18])
    p.add_argument("--size", type=int, nargs=2, default=[640, 800], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--bf16-batch", type=int, default=16, help="GPU only; 0 disables the bf16 rows")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--no-compile", dest="compile", action="store_false")
    p.add_argument("--channels-last", action="store_true")
    p.add_argument("--threads", type=int, default=0, help="CPU threads (0: torch's default)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    run(args)


if __name__ == "__main__":
    main()
