"""prn_model: the model layer of prn — the PRN network and loss (paper §3), the PyTorch dataset over a
store, the trainer (§4.2), PPGBF post-processing (§3.5), evaluation against the base network, and the demo.

It reads stores and scores with ``prn_data``; its commands, joined with the data commands into the ``prn``
console command, are in ``prn_model.cli``.
"""
