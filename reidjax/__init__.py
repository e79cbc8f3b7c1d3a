"""reidjax: person re-identification in JAX/Flax.

Sub-packages: ``backbones``, ``layers``, ``models``, ``losses``, ``train``,
``evaluate`` (all TensorFlow-free) and ``data`` (tf.data input, CPU only).
"""

__version__ = "0.1.0"
