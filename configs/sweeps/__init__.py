"""Sweeps for ``launch/xm_launch.py``: each file's ``get_sweep()`` lists config overrides, one dict per work unit."""
