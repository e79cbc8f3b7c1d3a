"""Training: the ``state``, the jitted ``step``, ``optimizer`` schedules and
``progress`` logging. The mesh helpers (``reidjax.sharding``) and Orbax
checkpoints (``reidjax.checkpoint``) live outside: evaluation uses them too,
and never imports this package.

TensorFlow-free; ``train.py`` wires these to the input pipeline.
"""
