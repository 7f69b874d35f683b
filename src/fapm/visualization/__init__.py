"""Figures of test results (input, ground truth, heatmap, predicted mask) and of memory banks."""

from fapm.visualization.figures import figure_png, memory_figure, new_figure, sample_figure, save_figure

__all__ = ["figure_png", "memory_figure", "new_figure", "sample_figure", "save_figure"]
