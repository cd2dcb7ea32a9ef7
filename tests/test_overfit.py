"""A small PRN memorises one real COCO sample on the CPU: eq. (1)'s total drops by ≥ 90%.

The sample (000000142238, 640×427) is resized to 160×107 by the project's resize policy (short 128,
long ≤ 160), its targets come from ``prn_data.targets.compute_targets`` and it is padded to 128×160 (a
multiple of 32) with ``valid`` False on the padding, as the loader pads. The PRN inputs are the ground truth
itself (instance maps encoded like the targets, one-hot semantics at 1/4): this is a memorisation check of
the network + loss + optimiser, not a refinement result.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from prn_data.datasets import open_dataset
from prn_data.resize import ResizePolicy, resize_labels, resize_sample
from prn_data.targets import TargetParams, compute_targets, encode_instances
from prn_model.loss import prn_loss
from prn_model.network import PRN, PRNConfig

H, W = 128, 160
STEPS = 100  # measured: −93% by step 75, −95% by step 100 (lr 6e-3, one thread)


def _pad(a: np.ndarray, fill: float = 0) -> torch.Tensor:
    """Pad the last two axes of ``a`` to (H, W) at the bottom/right and add the batch axis."""
    out = np.full(a.shape[:-2] + (H, W), fill, dtype=a.dtype)
    out[..., : a.shape[-2], : a.shape[-1]] = a
    return torch.from_numpy(out)[None]


def coco_batch(coco_root) -> tuple[dict[str, torch.Tensor], int]:
    ds = open_dataset(f"coco:{coco_root}", "val2017")
    sample = resize_sample(ds.load(0), ResizePolicy(short=128, max_long=160))
    h, w = sample.panoptic.shape
    assert (h, w) == (107, 160)
    t = compute_targets(sample.panoptic, sample.segments, TargetParams())
    n_cl = len(ds.categories)
    center, center_off, box_off, _ = encode_instances(sample.panoptic, sample.segments, sigma=8.0)
    sem_pad = _pad(t["semantic"], 255)[0].numpy()
    quarter = resize_labels(sem_pad, (H // 4, W // 4))
    onehot = (np.arange(n_cl)[:, None, None] == quarter[None]).astype(np.float32)
    batch = {
        "image": _pad(sample.image.transpose(2, 0, 1).astype(np.float32)),
        "instance": _pad(np.concatenate([center, center_off, box_off])),
        "base_semantic": torch.from_numpy(onehot)[None],
        "semantic": _pad(t["semantic"].astype(np.int64), 255),
        "center": _pad(t["center"]),
        "center_offset": _pad(t["center_offset"]),
        "box_offset": _pad(t["box_offset"]),
        "foreground": _pad(t["foreground"].astype(np.int64)),
        "semantic_weight": _pad(t["semantic_weight"]),
        "center_weight": _pad(t["center_weight"]),
        "offset_weight": _pad(t["offset_weight"]),
        "foreground_weight": _pad((t["panoptic"] != -1).astype(np.float32)),
        "valid": _pad(np.ones((h, w), dtype=bool), False),
    }
    return batch, n_cl


@pytest.mark.slow
def test_small_prn_overfits_one_coco_sample(coco_sample):
    torch.manual_seed(0)
    batch, n_cl = coco_batch(coco_sample)
    assert batch["offset_weight"].sum() > 1000 and (batch["semantic"][0, 107:] == 255).all()
    cfg = PRNConfig(
        num_classes=n_cl, depth=18, widths=(8, 8, 16, 16), n_en=8, c_de=16, skip_channels=8,
        semantic_head_channels=16, head_channels=8, norm="group",
    )
    model = PRN(cfg)
    # One thread: on the shared 2-core dev machine two threads made each step ~6× slower (measured).
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    opt = torch.optim.Adam(model.parameters(), lr=6e-3)  # high for Adam: one sample, few steps
    losses, terms = [], []
    start = time.perf_counter()
    try:
        for _ in range(STEPS):
            out = model(batch["image"], batch["instance"], batch["base_semantic"])
            total, parts = prn_loss(out, batch)
            opt.zero_grad(set_to_none=True)
            total.backward()
            opt.step()
            losses.append(total.item())
            terms.append({k: v.item() for k, v in parts.items()})
    finally:
        torch.set_num_threads(threads)
    elapsed = time.perf_counter() - start
    first, last = losses[0], min(losses[-10:])
    print(f"overfit: total loss {first:.3f} → {last:.3f} ({100 * (1 - last / first):.1f}% down) "
          f"in {STEPS} steps, {elapsed:.1f} s")
    assert last <= 0.1 * first
    assert all(terms[-1][k] < 0.5 * terms[0][k] for k in terms[0]), (terms[0], terms[-1])

