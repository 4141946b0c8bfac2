"""Work counts of the Hebbian pre-training step: multiply-adds (MACs) and bytes per layer, per batch and epoch.

Counted for the CIFAR 6-layer net (docs/NETWORKS.md#conv6), one batch of B images, float32. For a layer with
N = B·H'·W' patch rows of D = C·k·k inputs and M neurons:

    forward           N·M·D                  (the convolution itself; needed by every rule)
    hpca  reference   N·M·D + N·M² + M²·D    (YᵀX, YᵀY, tril(YᵀY)·W: the matrix form of docs/RULES.md#hpca)
    hpca  fast        what hebb.layers runs: the same moments through conv2d_weight (no unfold), or, when
                      `hebb.rules.hpca_prefers_blocked` says so (small N, large M: layer 5), the blocked
                      running-sum form 2·N·M·D + N·M·b + M·b·D with neuron blocks of b
    swta              N·M·D (QᵀX) + N·D (patch norms)
    wta               N·M·D (QᵀX with the dense one-hot Q that hebb.layers uses on conv layers); on a fully
                      connected layer N·D (the rows each neuron won, summed: `hebb.rules.add_winner_moments`)
    softhebb          N·M·D (ỸᵀX) + N·M (Σ Ỹ·U)

Before layer 1, the networks of the rules that whiten their input (soft-WTA, WTA on conv6) multiply each
image by the ZCA matrix: B·d² MACs for d = C·H·W (`zca_macs`). A pre-training epoch does it; the reference
comparison feeds both codes already whitened batches, so it is counted apart from the layers' work.

Other architectures (wide3: padded convolutions, overlapping pools) are counted the same way, per layer.

Bytes: `min_bytes` is the floor of a fused step (read the input map and W, write the output map and dW);
`unfold_bytes` is what materialising the unfolded patches adds (write N·D floats and read them back).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from hebb import rules
from hebb.network import ARCHITECTURES, ZCA_RULES

FLOAT_BYTES = 4
EPOCH_IMAGES = 40_000  # the CIFAR-10 training split
BATCH = 64


@dataclass(frozen=True)
class LayerShape:
    """One feature layer: input (C, H, W) as the convolution sees it (after padding), kernel k, M neurons,
    conv output side, pooled output side."""

    index: int
    in_channels: int
    in_side: int
    kernel: int
    neurons: int
    conv_side: int
    out_side: int

    def rows(self, batch: int) -> int:
        """N: patch rows per batch."""
        return batch * self.conv_side ** 2

    @property
    def inputs(self) -> int:
        """D: inputs per patch."""
        return self.in_channels * self.kernel ** 2


def layer_shapes(arch: str = "conv6") -> list[LayerShape]:
    """The feature layers of `arch` with their input and output sizes."""
    plan = ARCHITECTURES[arch]
    shapes, channels, side = [], plan.in_channels, plan.input_size
    for i, lp in enumerate(plan.layers, start=1):
        padded = side + 2 * lp.padding
        conv = padded - lp.kernel_size + 1
        out = (conv + 2 * lp.pool_padding - lp.pool) // (lp.pool_stride or lp.pool) + 1 if lp.pool > 1 else conv
        shapes.append(LayerShape(i, channels, padded, lp.kernel_size, lp.out_channels, conv, out))
        channels, side = lp.out_channels, out
    return shapes


def hpca_reference_macs(n: int, m: int, d: int) -> int:
    """YᵀX + YᵀY + tril(YᵀY)·W, beyond the forward product."""
    return n * m * d + n * m * m + m * m * d


def hpca_fast_macs(n: int, m: int, d: int, device_type: str = "cpu") -> tuple[int, str]:
    """(MACs beyond the forward product, form name) of the HPCA form hebb.layers picks on `device_type`."""
    if rules.hpca_prefers_blocked(n, m, d, device_type):
        b = rules.hpca_block_size(n, m, device_type)
        return 2 * n * m * d + n * m * b + m * b * d, f"blocked(b={b})"
    return hpca_reference_macs(n, m, d), "moments(conv2d_weight)"


def zca_macs(rule: str, batch: int = BATCH, arch: str = "conv6") -> int:
    """MACs of the ZCA whitening of one batch's input: B·d² where `rule`'s network on `arch` whitens, else 0."""
    plan = ARCHITECTURES[arch]
    if rule not in ZCA_RULES or not plan.zca_ok:
        return 0
    return batch * (plan.in_channels * plan.input_size ** 2) ** 2


def layer_work(shape: LayerShape, batch: int = BATCH, device_type: str = "cpu") -> dict:
    """MACs and bytes of one batch through one layer, for every rule and form."""
    n, d, m = shape.rows(batch), shape.inputs, shape.neurons
    hpca_fast, hpca_form = hpca_fast_macs(n, m, d, device_type)
    in_floats = batch * shape.in_channels * shape.in_side ** 2
    out_floats = batch * m * shape.conv_side ** 2
    return {
        "layer": shape.index,
        "N": n, "D": d, "M": m,
        "forward_macs": n * m * d,
        "hpca_reference_macs": hpca_reference_macs(n, m, d),
        "hpca_fast_macs": hpca_fast,
        "hpca_fast_form": hpca_form,
        "swta_macs": n * m * d + n * d,
        "wta_macs": n * d if shape.conv_side == 1 else n * m * d,
        "softhebb_macs": n * m * d + n * m,
        "min_bytes": FLOAT_BYTES * (in_floats + out_floats + 2 * m * d),
        "unfold_bytes": 0 if shape.conv_side == 1 else FLOAT_BYTES * 2 * n * d,
    }


def network_work(batch: int = BATCH, epoch_images: int = EPOCH_IMAGES, device_type: str = "cpu",
                 arch: str = "conv6") -> dict:
    """Per-layer work of one pre-training batch, and totals per batch and per epoch (in GMAC / TFLOP).

    A step of rule R costs forward + R's update on every layer; FLOPs = 2 x MACs.
    """
    layers = [layer_work(s, batch, device_type) for s in layer_shapes(arch)]
    batches = epoch_images / batch
    totals = {}
    for key in ("forward", "hpca_reference", "hpca_fast", "swta", "wta", "softhebb"):
        macs = sum(layer[f"{key}_macs"] for layer in layers)
        if key != "forward":
            macs += sum(layer["forward_macs"] for layer in layers)
        totals[f"{key}_step_gmac_per_batch"] = macs / 1e9
        totals[f"{key}_step_tflop_per_epoch"] = 2 * macs * batches / 1e12
    min_bytes = sum(layer["min_bytes"] for layer in layers)
    totals["min_gbytes_per_batch"] = min_bytes / 1e9
    totals["unfold_gbytes_per_batch"] = sum(layer["unfold_bytes"] for layer in layers) / 1e9
    return {"arch": arch, "batch": batch, "epoch_images": epoch_images, "device_type": device_type,
            "layers": layers, "totals": totals}


def floor_seconds(macs: float, nbytes: float, matmul_gflops: float, bandwidth_gbs: float) -> float:
    """The larger of arithmetic time (2·MACs at the measured matmul rate) and memory time."""
    return max(2 * macs / (matmul_gflops * 1e9), nbytes / (bandwidth_gbs * 1e9))


def format_table(work: dict) -> str:
    """The per-layer counts as a small text table (GMAC per batch)."""
    lines = [f"work per batch of {work['batch']} ({work['device_type']} forms), GMAC:",
             f"{'layer':>5} {'N':>7} {'D':>5} {'M':>5} {'fwd':>7} {'hpca_ref':>9} {'hpca_fast':>9} "
             f"{'swta':>7} {'unfoldMB':>8}  hpca form"]
    for layer in work["layers"]:
        lines.append(f"{layer['layer']:>5} {layer['N']:>7} {layer['D']:>5} {layer['M']:>5} "
                     f"{layer['forward_macs'] / 1e9:>7.3f} {layer['hpca_reference_macs'] / 1e9:>9.3f} "
                     f"{layer['hpca_fast_macs'] / 1e9:>9.3f} {layer['swta_macs'] / 1e9:>7.3f} "
                     f"{layer['unfold_bytes'] / 1e6:>8.1f}  {layer['hpca_fast_form']}")
    t = work["totals"]
    lines.append(f"step per epoch of {work['epoch_images']} images, TFLOP: hpca reference "
                 f"{t['hpca_reference_step_tflop_per_epoch']:.1f}, hpca fast {t['hpca_fast_step_tflop_per_epoch']:.1f}"
                 f", swta {t['swta_step_tflop_per_epoch']:.1f}")
    return "\n".join(lines)


def as_dict(shape: LayerShape) -> dict:
    return asdict(shape)


if __name__ == "__main__":
    for device_type in ("cpu", "cuda"):
        print(format_table(network_work(device_type=device_type)))
