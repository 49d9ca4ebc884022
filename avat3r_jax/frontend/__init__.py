"""The front end: photos and released datasets in.

DUSt3R point maps and cameras (with multi-view global alignment) and Sapiens feature maps, in
Flax NNX, loaded from the released checkpoints on local paths. Depends on ``avat3r_jax.geometry``
(and shared layers) only; nothing here reads or writes dataset records.
"""
