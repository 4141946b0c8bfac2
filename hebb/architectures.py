"""The architecture registry: one entry holds everything about a network architecture.

An entry (`ArchPlan`) says the input size, the feature layers (`LayerPlan`, bottom up), the reference's
training settings, which rules and baselines it is built for, the default feature layer for retrieval and
the per-layer feature reduction (pooling, projection, dimension) that "auto" means for that layer. Every
other module asks this registry; adding an architecture means adding one entry here (see
docs/NETWORKS.md). The module imports no torch, so that help texts can be built from it cheaply.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

from hebb.errors import UserError

#: layer -> (pooling, projection, dim): the feature reduction "auto" means for that layer.
Reductions = dict[int, tuple[str, str, "int | None"]]

@dataclass(frozen=True)
class LayerPlan:
    """One feature layer (block). Two layouts:

    norm "post" (the 6- and 10-layer nets): conv(kernel) -> activation -> [pooling] -> BN or BN*;
    norm "pre" (SoftHebb's wide net): BN without affine parameters -> reflect-pad `padding` -> conv ->
    activation -> [pooling].

    pool: pooling kernel size (0 or 1: no pooling); pool_stride None = pool; pool_kind "max" or "avg".
    activation "relu" or "triangle" (`hebb.layers.Triangle` with `power`). inv_temperature, eta: SoftHebb's
    β and per-layer rate (used when the layer learns with rule "softhebb").
    """

    out_channels: int
    kernel_size: int
    pool: int
    bn_star: bool = False
    norm: str = "post"
    padding: int = 0
    pool_kind: str = "max"
    pool_stride: int | None = None
    pool_padding: int = 0
    activation: str = "relu"
    power: float = 1.0
    inv_temperature: float = 1.0
    eta: float = 1.0


@dataclass(frozen=True)
class ArchPlan:
    """An architecture: input side and channels, feature layers bottom up (the last one is fully connected:
    its kernel covers the whole map below), and the reference's training settings where they differ from the
    library defaults (documented suggestions; see `hebb.finetune.default_weight_decay`).

    zca_ok: whether whole-image ZCA whitening is possible (its matrix is (3·side²)² floats).
    hebbian_lr: the reference's Hebbian pre-training learning rate for this architecture (for SoftHebb a
    multiplier of every layer's own `eta`).
    weight_decay: the reference's fine-tuning L2 penalty, or None for the class-count rule (5e-2 up to 10
    classes, 1e-2 above).
    top_fc: whether the top layer is fully connected (its kernel covers the map below; its features are
    a vector).
    rules: the rules (pre-training methods) this architecture is built for, "vae" where the VAE baseline has
    a decoder for it. aliases: older names of the same architecture.
    description: one line for help texts. batch_size: the default pre-training batch.
    """

    input_size: int
    in_channels: int
    layers: tuple[LayerPlan, ...]
    zca_ok: bool = True
    hebbian_lr: float = 1e-3
    weight_decay: float | None = None
    top_fc: bool = True
    rules: tuple[str, ...] = ("hpca", "swta", "wta")
    aliases: tuple[str, ...] = ()
    description: str = ""
    batch_size: int = 64
    default_layer: int = 0
    reductions: Reductions = field(default_factory=dict)

    def reduction(self, layer: int) -> tuple[str, str, int | None]:
        """(pooling, projection, dim) that "auto" means for `layer`."""
        return self.reductions.get(layer, ("flatten", "pca", 256))

    @property
    def depth(self) -> int:
        """Number of feature layers."""
        return len(self.layers)

    @property
    def feature_layer(self) -> int:
        """Default feature layer of a pre-trained (not fine-tuned) net for retrieval."""
        return self.default_layer or self.depth

    @property
    def first_activation_mb(self) -> float:
        """MB of one image's float32 layer-1 convolution output (what bounds a forward pass's batch)."""
        lp = self.layers[0]
        side = self.input_size + 2 * lp.padding - lp.kernel_size + 1
        return lp.out_channels * side * side * 4 / 1e6


class Registry(Mapping):
    """name -> `ArchPlan`. An older name (an entry's `aliases`) reads as the current one, so that checkpoints,
    indexes and command lines written before a rename keep working; iteration yields current names only."""

    def __init__(self, plans: dict[str, ArchPlan]):
        self._plans = dict(plans)
        #: Older names -> current names.
        self.aliases = {alias: name for name, plan in self._plans.items() for alias in plan.aliases}

    def resolve(self, name: str) -> str:
        """The current name of `name` (itself when it is not an alias)."""
        return self.aliases.get(name, name)

    def __getitem__(self, name: str) -> ArchPlan:
        return self._plans[self.resolve(name)]

    def __iter__(self) -> Iterator[str]:
        return iter(self._plans)

    def __len__(self) -> int:
        return len(self._plans)


#: Architecture registry: name -> plan (older names resolve too).
ARCHITECTURES = Registry({
    # The FastHebb 6-layer CIFAR net (five conv feature layers, the last fully connected, + classifier).
    "conv6": ArchPlan(
        input_size=32,
        in_channels=3,
        layers=(
            LayerPlan(96, 5, pool=2, bn_star=False),    # 96x14x14
            LayerPlan(128, 3, pool=0, bn_star=False),   # 128x12x12
            LayerPlan(192, 3, pool=2, bn_star=True),    # 192x5x5
            LayerPlan(256, 3, pool=0, bn_star=True),    # 256x3x3
            LayerPlan(4096, 3, pool=0, bn_star=True),   # fully connected 2304 -> 4096 (kernel = whole map)
        ),
        rules=("hpca", "swta", "wta", "vae"),  # the VAE baseline's decoder mirrors this trunk
        aliases=("cifar6",),
        description="the FastHebb 6-layer conv net for CIFAR (32x32 input, layers 1..5)",
        default_layer=3,
        # Chosen by mAP@100 / mAP@all (docs/EVALUATION.md#metrics) on a 5,000-image database (500 per class) and
        # 1,000 test queries, with HPCA pre-trained for 1 epoch on 3,000 images (CPU, no fine-tuning; a weak
        # net, so the differences are small); PCA fitted on the database. pca beat pcaw on mAP@all at layers
        # 2-5 (pcaw wins mAP@100 at layers 4-5 only); at layer 1 pcaw wins mAP@100 at equal mAP@all. 128 vs
        # 256 components made no difference; 256 is kept for stronger (fine-tuned) nets. Grid pooling is
        # what keeps layers 1-2 indexable at a sane size.
        #   layer 5 flatten 4096 raw .0471/.1320   pca256 .0472/.1341   pcaw256 .0578/.1276
        #   layer 4 avgmax  512 raw  .0532/.1374   pca256 .0543/.1397   grid pca256 .0519/.1370
        #   layer 4 flatten 2304 raw .0559/.1383   pca256 .0566/.1410   pcaw256 .0633/.1278
        #   layer 3 grid    768      pca256 .0626/.1437   pcaw256 .0739/.1355
        #   layer 3 flatten 4800 raw .0705/.1464   pca128 .0723/.1494   pca256 .0724/.1495   pcaw256 .0684/.1283
        #   layer 2 avgmax  256 raw  .0622/.1427   grid 512 raw .0723/.1474   grid pca256 .0742/.1503
        #   layer 1 avgmax  192 raw  .0590/.1383   grid 384 raw .0661/.1448   grid pca256 .0675/.1474
        #                                          grid pcaw256 .0879/.1474
        # The fine-tuned quickstart model (CPU configuration) at layer 5, flatten + pca256, on the
        # 40,000-image index with 1,000 test queries: mAP@100 .0865, P@10 .259.
        reductions={1: ("grid", "pcaw", 256), 2: ("grid", "pca", 256), 3: ("flatten", "pca", 256),
                    4: ("flatten", "pca", 256), 5: ("flatten", "pca", 256)},
    ),
    # The reference's 10-layer ImageNet-size net (FastHebb code). Hebbian lr 1e-4 and fine-tuning L2 1e-3 are
    # the reference's ImageNet settings. Whole-image ZCA would need a 132,300 x 132,300 matrix (70 GB): none.
    "conv10": ArchPlan(
        input_size=210,
        in_channels=3,
        layers=(
            LayerPlan(96, 7, pool=3, bn_star=False),    # 96x68x68
            LayerPlan(128, 3, pool=0, bn_star=False),   # 128x66x66
            LayerPlan(192, 3, pool=2, bn_star=False),   # 192x32x32
            LayerPlan(192, 3, pool=0, bn_star=False),   # 192x30x30
            LayerPlan(256, 3, pool=2, bn_star=False),   # 256x14x14
            LayerPlan(256, 3, pool=0, bn_star=False),   # 256x12x12
            LayerPlan(384, 3, pool=2, bn_star=True),    # 384x5x5
            LayerPlan(512, 3, pool=0, bn_star=True),    # 512x3x3
            LayerPlan(4096, 3, pool=0, bn_star=True),   # fully connected 4608 -> 4096 (kernel = whole map)
        ),
        zca_ok=False,
        hebbian_lr=1e-4,
        weight_decay=1e-3,
        aliases=("imagenet10",),
        description="the FastHebb 10-layer conv net, ImageNet-size (210x210 input, layers 1..9; 132 KB per image)",
        default_layer=3,
        # NOT MEASURED: chosen by analogy with the 6-layer table and by size. Maps of 12x12 and larger
        # (layers 1..6) are grid-pooled (flattening layer 3 would give 196,608 floats per image, and a PCA fit
        # over 10,000 of those 7.9 GB); the small maps of layers 7..8 (9,600 and 4,608 floats) and the fully
        # connected layer 9 (4,096) are flattened; everything is projected to 256 by PCA.
        reductions={1: ("grid", "pcaw", 256), **{layer: ("grid", "pca", 256) for layer in range(2, 7)},
                    7: ("flatten", "pca", 256), 8: ("flatten", "pca", 256), 9: ("flatten", "pca", 256)},
    ),
    # SoftHebb's wide CIFAR net (Journé et al. 2023): each block BN (no affine) -> reflect pad -> conv ->
    # Triangle -> pooling; β and η per block. hebbian_lr multiplies the blocks' η.
    "wide3": ArchPlan(
        input_size=32,
        in_channels=3,
        layers=(
            LayerPlan(96, 5, pool=4, pool_stride=2, pool_padding=1, norm="pre", padding=2,
                      activation="triangle", power=0.7, inv_temperature=1.0, eta=0.08),     # 96x16x16
            LayerPlan(384, 3, pool=4, pool_stride=2, pool_padding=1, norm="pre", padding=1,
                      activation="triangle", power=1.4, inv_temperature=0.65, eta=0.005),   # 384x8x8
            LayerPlan(1536, 3, pool=2, pool_kind="avg", norm="pre", padding=1,
                      activation="triangle", power=1.0, inv_temperature=0.25, eta=0.01),    # 1536x4x4
        ),
        zca_ok=False,
        hebbian_lr=1.0,
        # The reference's batch 10 kept the best probe accuracy (bench/results/softhebb-batch.json: 68.4% against
        # 67.1% at batch 64 with 3x the rate, 63.6% at 1x, 66.0% at 8x; 10,000 images, one seed).
        batch_size=10,
        top_fc=False,
        rules=("softhebb",),
        description="SoftHebb's wide 3-block CIFAR net (32x32 input, blocks 1..3: 96, 384, 1536 channels)",
        default_layer=3,
        # Measured (bench/reductions.py, bench/results/wide3-reductions-softhebb.json): SoftHebb one epoch on
        # 40,000 images, database 5,000 training images, 1,000 test queries; mAP@100 / mAP@all. flatten +
        # PCA 256 was best at every block: block 1 .118/.174 (grid+pcaw .088/.144), block 2 .139/.187 (grid+pca
        # .129/.183), block 3 .150/.194 (avg+pca .128/.186, grid+pca .147/.193); whitening always lost.
        reductions={1: ("flatten", "pca", 256), 2: ("flatten", "pca", 256), 3: ("flatten", "pca", 256)},
    ),
})
#: The architecture a network is built on when none is named: the registry's first.
DEFAULT_ARCH = next(iter(ARCHITECTURES))


def canonical_arch(arch: str) -> str:
    """The registry name of `arch` (an older alias maps to its current name); unknown: a `UserError`."""
    if arch not in ARCHITECTURES:
        raise UserError(f"unknown architecture '{arch}' (known: {', '.join(ARCHITECTURES)})")
    return ARCHITECTURES.resolve(arch)


def architecture(arch: str) -> ArchPlan:
    """The plan of architecture `arch`; an unknown name is a `UserError` listing the known ones."""
    return ARCHITECTURES[canonical_arch(arch)]


def arch_help() -> str:
    """One line per architecture, for --help texts."""
    return "; ".join(f"{name}: {plan.description}" for name, plan in ARCHITECTURES.items())


def layers_help() -> str:
    """The feature layers of every architecture, for --help texts: '1..5 for conv6, 1..9 for conv10, ...'."""
    return ", ".join(f"1..{plan.depth} for {name}" for name, plan in ARCHITECTURES.items())


def layer_shapes(plan: ArchPlan) -> list[tuple[int, int]]:
    """(channels, side) of the output of every feature layer of `plan`, bottom up."""
    shapes, size = [], plan.input_size
    for lp in plan.layers:
        size = size + 2 * lp.padding - lp.kernel_size + 1
        if lp.pool > 1:
            size = (size + 2 * lp.pool_padding - lp.pool) // (lp.pool_stride or lp.pool) + 1
        shapes.append((lp.out_channels, size))
    return shapes


