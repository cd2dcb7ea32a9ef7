"""Shared fixtures: paths to the shipped COCO sample and the real data in ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
COCO_SAMPLE = REPO / "prn_data" / "samples" / "coco"
SHARED_DATA = REPO.parent / "shared" / "data"
CITYSCAPES_SAMPLE = SHARED_DATA / "cityscapes_sample"
CITYSCAPES_PANOPTIC_SAMPLE = SHARED_DATA / "deeplab2_cityscapes_format_sample"


@pytest.fixture(scope="session")
def coco_sample() -> Path:
    return COCO_SAMPLE


@pytest.fixture(scope="session")
def cityscapes_sample() -> Path:
    if not CITYSCAPES_SAMPLE.is_dir():
        pytest.skip("../shared/data/cityscapes_sample is not present (it may not be redistributed)")
    return CITYSCAPES_SAMPLE


@pytest.fixture(scope="session")
def cityscapes_panoptic_sample() -> Path:
    if not CITYSCAPES_PANOPTIC_SAMPLE.is_dir():
        pytest.skip("../shared/data/deeplab2_cityscapes_format_sample is not present")
    return CITYSCAPES_PANOPTIC_SAMPLE
