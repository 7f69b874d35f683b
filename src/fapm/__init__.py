"""FAPM: Fast Adaptive Patch Memory for real-time industrial anomaly detection."""

__version__ = "0.1.0"
