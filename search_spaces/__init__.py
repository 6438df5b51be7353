"""Typed experiment configs and define-by-run search spaces, one module per paper table (#3, #4)."""
