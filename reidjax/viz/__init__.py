"""Reports and plots of evaluation results (PNG via matplotlib Agg / PIL)."""

from reidjax.viz.report import (
    cell_origin,
    plot_cmc,
    ranked_list_image,
    ranked_lists,
    write_metrics_json,
)
from reidjax.viz.attention import (
    draw_pair_attention,
    pair_attention_figure,
)

__all__ = [
    "cell_origin",
    "plot_cmc",
    "ranked_list_image",
    "ranked_lists",
    "write_metrics_json",
    "draw_pair_attention",
    "pair_attention_figure",
]
