"""Reports and plots of evaluation results (PNG via matplotlib Agg / PIL).

``report``: metrics JSON, CMC curves, ranked lists (every model).
``duatm``: DuATM's attention maps over a pair (its Fig. 8); ``dcanet``:
DCANet's K spatial attention maps of one image (its Fig. 3). Each paper's
figure module is named after the paper and is also a command line
(``python -m reidjax.viz.duatm``), so it is imported on first use here:
importing it eagerly would load it twice under ``python -m``.

Every paper with a figure has one entry point of one signature,
``paper_figure(model, variables, data_config, query, gallery, path=None)``
in its module (``query`` / ``gallery``: ``panels.Item``), returning the PIL
image, or None where the model's configuration has nothing to draw (e.g. a
channel-only DCANet). ``PAPER_FIGURES`` maps ``model.name`` to that module;
``paper_figure(model_name, ...)`` dispatches (None for a model without a
figure, e.g. the baseline). What each draws of the pair:

* duatm: the pair's intra / inter attention (Fig. 8; clips for video);
* dcanet: the query's K spatial attention maps (Fig. 3; video: its first frame);
* cacenet: the pair's strongest cross-image edges of Eq. 4 (Fig. 5; paper variant);
* fgra: the query clip's region responses (Fig. 5; ``data.clip_length`` frames);
* attdriven: the query's part boxes from its keypoints (stripes without) and
  the intra-attention maps of Blocks 2-4 (Figs. 4c and 7).
"""

from __future__ import annotations

import importlib
from typing import Any

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

# model.name -> the module whose ``paper_figure`` draws that paper's figure.
PAPER_FIGURES = {
    "duatm": "reidjax.viz.duatm",
    "dcanet": "reidjax.viz.dcanet",
    "cacenet": "reidjax.viz.cacenet",
    "fgra": "reidjax.viz.fgra",
    "attdriven": "reidjax.viz.attdriven",
}

__all__ = [
    "PAPER_FIGURES",
    "paper_figure",
    "cell_origin",
    "plot_cmc",
    "ranked_list_image",
    "ranked_lists",
    "write_metrics_json",
    *_PAPER_FIGURES,
]


def paper_figure(model_name: str, model: Any, variables: Any, data_config: Any,
                 query: Any, gallery: Any, path: str | None = None):
  """The figure of ``model_name``'s paper for a (query, gallery) pair (module doc).

  Args:
    model_name: the config's ``model.name``.
    model, variables: the model and its variables.
    data_config: the run's ``data`` section (input size, clip length, parts).
    query, gallery: ``reidjax.viz.panels.Item``s.
    path: where the PNG goes (None: not written).

  Returns:
    The PIL image, or None (no figure for this model or configuration).
  """
  if model_name not in PAPER_FIGURES:
    return None
  module = importlib.import_module(PAPER_FIGURES[model_name])
  return module.paper_figure(model, variables, data_config, query, gallery, path)


def __getattr__(name):
  if name in _PAPER_FIGURES:
    return getattr(importlib.import_module(_PAPER_FIGURES[name]), name)
  raise AttributeError(f"module 'reidjax.viz' has no attribute {name!r}")
