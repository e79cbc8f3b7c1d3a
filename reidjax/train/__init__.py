"""Training: the data mesh (``sharding``), ``state``, the jitted ``step``,
``optimizer`` schedules, Orbax ``checkpoint``s and ``progress`` logging.

TensorFlow-free; ``train.py`` wires these to the input pipeline.
"""
