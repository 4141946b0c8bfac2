"""hebb: Hebbian learning for CNNs (fast matrix-form rules, layers, networks, pre-training, fine-tuning)."""

__version__ = "0.1.0"
