"""Reference figures from the papers, to print beside ours.

Source: Lagani, Gennaro, Fassold, Amato, "FastHebb: Scaling Hebbian Training of Deep Neural Networks to
ImageNet Level" (docs/SOURCES.md), CIFAR-10 column. Mean of 5 runs; the paper gives no
confidence intervals. Its hardware: Intel Core i7 10700K, 32 GB RAM, NVIDIA GeForce RTX 3060 12 GB,
PyTorch 1.8.

The papers report no retrieval mAP figures (FastHebb names CBIR as future work, citing preliminary work),
so `PAPER_MAP` is empty: the report says so instead of inventing a comparison.
"""

from __future__ import annotations

PAPER_SOURCE = "FastHebb (Lagani et al.), Table 2 (accuracy) and Table 1 (training time), CIFAR-10"

#: Table 2, CIFAR-10 top-1 test accuracy (%) after pre-training + end-to-end fine-tuning, per label regime (%).
PAPER_ACCURACY: dict[str, dict[float, float]] = {
    "hpca": {1: 39.75, 2: 45.51, 3: 48.80, 4: 51.28, 5: 52.20, 10: 57.35, 25: 64.77, 100: 84.38},
    "swta": {1: 30.23, 2: 36.59, 3: 41.54, 4: 45.31, 5: 48.35, 10: 58.00, 25: 69.85, 100: 85.37},
    "vae": {1: 22.54, 2: 26.78, 3: 29.00, 4: 31.15, 5: 32.75, 10: 45.67, 25: 68.70, 100: 85.23},
}

#: Table 1, CIFAR-10 pre-training time: epoch duration (s), epochs to convergence, total (s).
#: "-FH" rows are the FastHebb implementations; HPCA / SWTA rows the earlier GPU code they replace.
PAPER_TRAINING_TIME: dict[str, dict[str, float]] = {
    "vae": {"epoch_s": 14, "epochs": 17, "total_s": 3 * 60 + 58},
    "swta (pre-FastHebb)": {"epoch_s": 4 * 60 + 14, "epochs": 1, "total_s": 4 * 60 + 14},
    "swta": {"epoch_s": 18, "epochs": 1, "total_s": 18},
    "hpca (pre-FastHebb)": {"epoch_s": 6 * 60 + 23, "epochs": 12, "total_s": 3600 + 16 * 60 + 36},
    "hpca": {"epoch_s": 19, "epochs": 12, "total_s": 3 * 60 + 48},
}

#: Retrieval mAP reported by the papers for this protocol: none.
PAPER_MAP: dict[str, dict[float, float]] = {}

#: Display names of the methods.
METHOD_NAMES = {"hpca": "HPCA", "swta": "soft-WTA", "wta": "hard WTA", "vae": "VAE", "sgd": "SGD (scratch)",
                "random": "random frozen", "softhebb": "SoftHebb"}

#: SoftHebb (Journé et al., ICLR 2023): linear probe on the wide3 net after one unsupervised epoch, trained on
#: all 50,000 CIFAR-10 training images (ours: the 40,000 of our training split).
PAPER_ACCURACY["softhebb probe"] = {100: 80.3}


#: Display names of the read-outs that are not the seed papers' fine-tuning.
READOUT_NAMES = {"probe": "probe", "probe-std": "probe, standardised features", "probe-flip": "probe, random flips",
                 "finetune-aug": "fine-tuned with flips and shifts"}


def method_name(key: str) -> str:
    """Display name of a table row: 'softhebb probe' -> 'SoftHebb (probe)', 'sgd@ARCH' -> 'SGD (scratch), ARCH'."""
    method, _, readout = key.partition(" ")
    rule, _, arch = method.partition("@")
    name = METHOD_NAMES.get(rule, rule) + (f", {arch}" if arch else "")
    return f"{name} ({READOUT_NAMES.get(readout, readout)})" if readout else name


def paper_accuracy(method: str, regime: float) -> float | None:
    """The paper's CIFAR-10 accuracy (%) for `method` at `regime` %, or None when it reports none."""
    return PAPER_ACCURACY.get(method, {}).get(float(regime))
