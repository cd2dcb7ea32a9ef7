"""Frozen copy of prn_model.ppgbf / prn_model.merge as of commit cf89146 (before the speed-up), kept so
benchmarks/postprocess.py can time the optimised post-processing against it in the same process and
assert that both give identical panoptic maps and segments. Not used by the package."""
