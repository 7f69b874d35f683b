"""Lightning callbacks of the project (figures)."""

from fapm.callbacks.visualizer import ImageVisualizer

__all__ = ["ImageVisualizer"]
