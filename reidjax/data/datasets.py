"""From the ``data`` config section to a dataset index.

``data.name = "synthetic"`` writes the generated Market-layout set under
``data.root`` the first time (a no-op afterwards) and parses it with the real
Market-1501 parser; any other name is parsed from ``data.root``.
"""

from __future__ import annotations

import ml_collections

from reidjax.data import layouts, synthetic
from reidjax.data.index import ImageDataset


def load_dataset(config: ml_collections.ConfigDict) -> ImageDataset:
  """Parses (and for ``synthetic``, first writes) the dataset of ``config``."""
  if config.name == "synthetic":
    root = config.root or "data/synthetic_market"
    synthetic.write_synthetic_market(root, **config.get("synthetic", {}))
    return layouts.parse_market1501(root, name="synthetic")
  if not config.root:
    raise ValueError(
        f"data.root is empty: point it at the unpacked {config.name} folder, "
        f"e.g. --config.data.root=/data/{config.name}, or use the synthetic "
        "set (configs/baseline.py:synthetic).")
  return layouts.parse_dataset(config.name, config.root)
