"""CLI, Ray Tune / Optuna wiring, stage cache, MLflow tracking and reports (issues #3, #4, #7)."""
