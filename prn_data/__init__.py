"""prn_data: the data layer of prn — datasets, ground-truth targets, base networks, the Zarr store of PRN
inputs and targets (built with Dask), its inspection and sharing, and the PQ metric (NumPy).

The data path is dataset (``prn_data.datasets``) → resize (``prn_data.resize``) → targets
(``prn_data.targets``) and base-network inputs (``prn_data.base``) → store (``prn_data.store``), written by
``prn_data.build``. This package never imports ``prn_model``; its commands are in ``prn_data.cli``.
"""

from pathlib import Path

__version__ = "0.1.0"

SAMPLES_DIR: Path = Path(__file__).resolve().parent / "samples"
"""Real data shipped inside the package: ``coco/`` holds two COCO val2017 images with their panoptic
annotations (official layout)."""
