"""What runs inside one trial: data, models, the training loop, metrics, modality adapters.

Never imports Ray or MLflow; reports through a callback.
"""
