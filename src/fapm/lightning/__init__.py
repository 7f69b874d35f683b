"""Thin Lightning glue around the plain-torch detectors."""
