"""hebb: Hebbian learning for CNNs (fast matrix-form rules, layers, networks, pre-training, fine-tuning)."""

from hebb import allocator  # noqa: F401  (tunes glibc malloc for the training steps on import)

__version__ = "0.1.0"


def __getattr__(name: str):
    # The registry is imported on first use, so that `import hebb` (and `hebbir --help`) stays free of torch.
    if name == "ARCHITECTURES":
        from hebb.network import ARCHITECTURES

        return ARCHITECTURES
    raise AttributeError(f"module 'hebb' has no attribute {name!r}")
