"""Reports and plots of evaluation results (PNG via matplotlib Agg / PIL).

``report``: metrics JSON, CMC curves, ranked lists (every model).
``duatm``: DuATM's attention maps over a pair (its Fig. 8); ``dcanet``:
DCANet's K spatial attention maps of one image (its Fig. 3). Each paper's
figure module is named after the paper and is also a command line
(``python -m reidjax.viz.duatm``), so it is imported on first use here:
importing it eagerly would load it twice under ``python -m``.
"""

import importlib

from reidjax.viz.report import (
    cell_origin,
    plot_cmc,
    ranked_list_image,
    ranked_lists,
    write_metrics_json,
)

# Name -> the paper figure module that defines it.
_PAPER_FIGURES = {
    "draw_pair_attention": "reidjax.viz.duatm",
    "pair_attention_figure": "reidjax.viz.duatm",
    "draw_attention_maps": "reidjax.viz.dcanet",
    "attention_maps_figure": "reidjax.viz.dcanet",
    "draw_cross_edges": "reidjax.viz.cacenet",
    "pair_edges_figure": "reidjax.viz.cacenet",
    "draw_region_responses": "reidjax.viz.fgra",
    "region_alignment_figure": "reidjax.viz.fgra",
    "draw_part_attention": "reidjax.viz.attdriven",
    "part_attention_figure": "reidjax.viz.attdriven",
}

__all__ = [
    "cell_origin",
    "plot_cmc",
    "ranked_list_image",
    "ranked_lists",
    "write_metrics_json",
    *_PAPER_FIGURES,
]


def __getattr__(name):
  if name in _PAPER_FIGURES:
    return getattr(importlib.import_module(_PAPER_FIGURES[name]), name)
  raise AttributeError(f"module 'reidjax.viz' has no attribute {name!r}")
