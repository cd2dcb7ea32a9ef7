"""The demo's settings (:class:`DemoOptions`) and fixed choices, apart from the demo itself so that the
``prn demo`` command can show its defaults without importing torch."""

from __future__ import annotations

from dataclasses import dataclass

from prn_data.errors import PrnError

# Harsher than the simulator's defaults in one respect only: at the demo's ~128-px scenes a 28×28 RoI
# mask is nearly lossless (objects are 20-50 px), unlike COCO objects at 640 px where RoI masks lose the
# boundary (§1). A 12×12 mask keeps the ratio of mask cells to object pixels close to the paper's setting.
DEMO_BASE = "simulated:mask=12"
# Target parameters of the synthetic stores. The scenes are 1/5 of COCO's stored size (160 vs 800 px), so
# Panoptic-DeepLab's σ = 8 px (COCO at 640-800 px) made Gaussians five times too wide for the objects:
# neighbours' centers merged and PRN learned less. σ = 8/5 would be under one pixel at the network's 1/4
# resolution; σ = 4 (one pixel there) was chosen on the val scenes (workflows/README.md, "Center Gaussians
# at the demo's scale": val gain +2.37 PQ at σ 8, +4.68 at σ 4). The small-instance area scales with σ².
DEMO_SIGMA = 4.0
DEMO_SMALL_INSTANCE_AREA = 1024
DEMO_MIN_SIZE = (96, 128)
DEMO_MAX_SIZE = (128, 160)
COCO_SPLIT = "val2017"


@dataclass
class DemoOptions:
    """Sizes of the demo. ``train_images`` / ``val_images`` / ``test_images``: synthetic scenes per split; ``min_size`` /
    ``max_size``: scene size bounds ``(h, w)`` in px; ``iters`` / ``batch_size``: override the config's;
    ``config``: training YAML (default ``workflows/demo.yaml``); ``base``: base-network spec for the
    synthetic stores; ``coco_limit``: build only the first N COCO sample images; ``workers`` / ``scheduler``:
    as ``prn build`` (``"threads"`` avoids starting worker processes); ``device``: training and evaluation
    device (``auto`` = CUDA when present)."""

    # 800 scenes: with 160, PRN fitted its training scenes (+4 PQ over the base there) but gained +0.3 on
    # held-out ones; 100 val scenes steady the table (workflows/README.md, "What it reaches").
    train_images: int = 800
    val_images: int = 100
    # the reported table's own scenes, never used for tuning (val is for that)
    test_images: int = 100
    min_size: tuple[int, int] = DEMO_MIN_SIZE
    max_size: tuple[int, int] = DEMO_MAX_SIZE
    seed: int = 0
    iters: int | None = None
    batch_size: int | None = None
    config: str | None = None
    base: str = DEMO_BASE
    coco_limit: int | None = None
    workers: int | None = None
    scheduler: str | None = None
    device: str = "auto"

    def __post_init__(self) -> None:
        if self.train_images < 1 or self.val_images < 1 or self.test_images < 1:
            raise PrnError("the demo needs at least one train, one val and one test image")
        self.min_size = tuple(int(v) for v in self.min_size)  # type: ignore[assignment]
        self.max_size = tuple(int(v) for v in self.max_size)  # type: ignore[assignment]


__all__ = ["COCO_SPLIT", "DEMO_BASE", "DEMO_SIGMA", "DEMO_SMALL_INSTANCE_AREA", "DEMO_MAX_SIZE", "DEMO_MIN_SIZE", "DemoOptions"]
