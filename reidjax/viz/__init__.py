"""Reports and plots of evaluation results (PNG via matplotlib Agg / PIL)."""

from reidjax.viz.report import (
    cell_origin,
    plot_cmc,
    ranked_list_image,
    ranked_lists,
    write_metrics_json,
)

__all__ = [
    "cell_origin",
    "plot_cmc",
    "ranked_list_image",
    "ranked_lists",
    "write_metrics_json",
]
