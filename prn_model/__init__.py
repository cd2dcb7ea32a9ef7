"""prn_model: the PRN network and loss, the PyTorch dataset over a store, the trainer, PPGBF
post-processing and PQ evaluation."""
