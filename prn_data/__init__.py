"""prn_data: datasets, ground-truth targets, base networks and the Zarr store of PRN inputs and targets.

The data path is dataset (``prn_data.datasets``) → resize (``prn_data.resize``) → targets
(``prn_data.targets``) and base-network inputs (``prn_data.base``) → store (``prn_data.store``).
"""

__version__ = "0.1.0"
