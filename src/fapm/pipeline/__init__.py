"""Entry-point functions behind train.py / eval.py (Hydra configs in, metrics out)."""
