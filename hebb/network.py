"""The networks of docs/NETWORKS.md and their Hebbian / backprop / random-frozen variants.

The architectures are the registry's (`ARCHITECTURES`, from `hebb.architectures`): the 6-layer CIFAR net,
the reference's 10-layer ImageNet-size net and SoftHebb's wide net. A network is a stack of feature layers
and a classifier (dropout 0.5 + linear). Each feature layer is built from one letter of a *spec* string
(one letter per layer, the last one the classifier: depth + 1 letters):

    H  Hebbian: `HebbConv2d` with the network's rule (learns in `pretrain`, and by backprop when fine-tuned)
    G  gradient descent: a plain convolution + ReLU, trained by backprop only
    R  random frozen: a plain convolution + ReLU whose parameters never change

so the hybrid configurations of the 2019 paper's Table 2 ("HHGGGG", "RRGGGG", "GHGGGG", "GGGGGH", ...) are
buildable. The classifier letter is G (dropout 0.5 + linear, trained by backprop), R (the same, frozen random)
or H (`HebbianClassifier`: a linear read-out learned with the supervised teacher-signal form of the rule,
docs/RULES.md#teacher-signal). A network may be *cut* after layer l: the layers above are dropped and a fresh
classifier reads the flattened output of layer l.

The network owns its input pre-processing as buffers (per-channel mean/std and, optionally, ZCA whitening of
the whole image fitted on training images), so callers hand it float images in [0, 1].
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from hebb.architectures import (ARCHITECTURES, DEFAULT_ARCH, ArchPlan, LayerPlan, architecture,  # noqa: F401
                                 canonical_arch, layer_shapes)
from hebb.dropout import Dropout
from hebb.errors import UserError

HEBBIAN_RULES = ("hpca", "swta", "wta", "softhebb")
#: Rule names accepted by `build_network`: the Hebbian ones, plus whole-network kinds for the baselines.
RULES = HEBBIAN_RULES + ("sgd", "random", "vae")
#: Rules whose networks whiten their input with ZCA by default (as in the reference code).
ZCA_RULES = ("swta", "wta")

# CIFAR-10 training-set statistics: the defaults until `fit_input` sees the real training images.
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


class BatchNormStar(nn.BatchNorm2d):
    """BN*: batch norm whose output is rescaled per channel by sqrt(running_var_c / mean(running_var)).

    Channels keep their relative variance (what the Hebbian layer above learns from) while staying
    normalised on average. The scale is a detached function of the running statistics, as in the reference.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rescale(super().forward(x))

    def rescale(self, out: torch.Tensor) -> torch.Tensor:
        """Batch-normalised `out` times each channel's BN* scale from the current running variances."""
        var = self.running_var.detach()
        scale = ((var + self.eps) / (var.mean() + self.eps)).sqrt()
        return out * scale.view(1, -1, 1, 1)


class MaxPool2d(nn.MaxPool2d):
    """Max pooling that runs in channels-last layout on the CPU: the same values, and for SoftHebb's
    overlapping 4x4 pools on (10, 96, 32, 32) 18x faster than torch's NCHW CPU kernel (0.5 against 9.2 ms;
    a whole SoftHebb wide-net training step about 10% faster, measured 2026-12-02, one thread)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.device.type != "cpu" or x.dim() != 4:
            return super().forward(x)
        return super().forward(x.contiguous(memory_format=torch.channels_last)).contiguous()


def make_activation(plan: LayerPlan) -> nn.Module:
    """The activation module a layer plan asks for."""
    if plan.activation == "triangle":
        from hebb.layers import Triangle

        return Triangle(plan.power)
    if plan.activation != "relu":
        raise UserError(f"unknown activation '{plan.activation}'")
    return nn.ReLU()


class FeatureLayer(nn.Module):
    """One feature layer of the net (see `LayerPlan` for the two layouts); conv Hebbian (H) or plain (G, R)."""

    def __init__(self, kind: str, in_channels: int, plan: LayerPlan, rule: str, temperature: float):
        super().__init__()
        self.kind = kind
        self.norm_first = plan.norm == "pre"
        self.padding = plan.padding
        activation = make_activation(plan)
        if kind == "H":
            from hebb.layers import HebbConv2d  # the activation lives inside the Hebbian layer

            self.conv = HebbConv2d(in_channels, plan.out_channels, plan.kernel_size, rule=rule,
                                   temperature=temperature, inv_temperature=plan.inv_temperature, eta=plan.eta,
                                   activation=activation)
            self.activation = None
        else:
            self.conv = nn.Conv2d(in_channels, plan.out_channels, plan.kernel_size, bias=False)
            self.activation = activation
        if plan.pool > 1:
            stride = plan.pool_stride or plan.pool
            pool_cls = MaxPool2d if plan.pool_kind == "max" else nn.AvgPool2d
            self.pool = pool_cls(plan.pool, stride=stride, padding=plan.pool_padding)
        else:
            self.pool = None
        if self.norm_first:
            self.bn = nn.BatchNorm2d(in_channels, affine=False)
        else:
            self.bn = (BatchNormStar if plan.bn_star else nn.BatchNorm2d)(plan.out_channels)
        if kind == "R":
            self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.norm_first:
            x = self.bn(x)
        if self.padding:
            x = F.pad(x, (self.padding,) * 4, mode="reflect")
        x = self.conv(x)
        if self.activation is not None:
            x = self.activation(x)
        if self.pool is not None:
            x = self.pool(x)
        return x if self.norm_first else self.bn(x)


def _parse_spec(arch: ArchPlan, rule: str, spec: str | None) -> str:
    n = len(arch.layers) + 1
    if spec is None:
        spec = {"sgd": "G" * n, "vae": "G" * n, "random": "R" * (n - 1) + "G"}.get(rule, "H" * (n - 1) + "G")
    spec = spec.upper()
    if len(spec) != n or set(spec) - set("HGR"):
        raise UserError(f"spec must be {n} letters from H, G, R (one per layer, classifier last), got '{spec}'")
    if "H" in spec[:-1] and rule not in HEBBIAN_RULES:
        raise UserError(f"spec '{spec}' has Hebbian layers but rule '{rule}' is not one of {HEBBIAN_RULES}")
    return spec


class HebbianClassifier(nn.Module):
    """Linear read-out learned by a Hebbian rule with a teacher signal (docs/RULES.md#teacher-signal).

    Logits are the scalar products of the input with the unit-norm class vectors, x · w_c / ‖w_c‖. Learning
    replaces the neuron outputs by the one-hot teacher signal of the labels (`hebb.rules.teacher_signal`):
    with it, every rule moves each class vector toward the mean of its class's inputs (soft-WTA and WTA:
    Δw_c = mean_{b in c} x_b − w_c; HPCA: the same scaled by the class's share of the batch). The weight has
    no gradient: backprop never changes it.
    """

    def __init__(self, in_features: int, num_classes: int, rule: str = "swta"):
        super().__init__()
        if rule not in HEBBIAN_RULES:
            raise UserError(f"unknown Hebbian rule {rule!r} (expected one of {', '.join(HEBBIAN_RULES)})")
        self.in_features, self.out_features, self.rule = int(in_features), int(num_classes), rule
        self.weight = nn.Parameter(torch.empty(self.out_features, self.in_features), requires_grad=False)
        nn.init.xavier_normal_(self.weight)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, rule={self.rule!r}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        norms = w.norm(dim=1, keepdim=True)
        return F.linear(x, w / torch.where(norms > 0, norms, torch.ones_like(norms)))

    @torch.no_grad()
    def hebbian_delta(self, x: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """The supervised update dW (num_classes, in_features), no learning rate, for inputs x (N, D)."""
        from hebb import rules

        x = x.flatten(1).to(self.weight.dtype)
        teacher = rules.teacher_signal(labels.to(x.device), self.out_features, self.out_features)
        w = self.weight.detach()
        if self.rule == "hpca":
            return rules.hpca_delta(x, w, y=teacher)
        if self.rule == "swta":
            return rules.swta_delta(x, w, y=teacher)
        return rules.wta_delta(x, w, y=teacher)


class HebbNet(nn.Module):
    """A feature-layer stack plus classifier; see the module docstring. Build it with `build_network`."""

    def __init__(self, arch: str = DEFAULT_ARCH, num_classes: int = 10, rule: str = "hpca", spec: str | None = None,
                 cut_layer: int | None = None, zca: bool | None = None, temperature: float = 0.02):
        super().__init__()
        arch = canonical_arch(arch)
        plan = architecture(arch)
        if rule not in RULES:
            raise UserError(f"unknown rule '{rule}' (known: {', '.join(RULES)})")
        if rule not in plan.rules + ("sgd", "random"):
            raise UserError(f"rule '{rule}' is not built for '{arch}' (it takes "
                            f"{', '.join(plan.rules + ('sgd', 'random'))})")
        self.arch, self.rule, self.temperature = arch, rule, float(temperature)
        self.spec = _parse_spec(plan, rule, spec)
        self.num_classes = int(num_classes)
        self.input_size = plan.input_size
        self.use_zca = (rule in ZCA_RULES and plan.zca_ok) if zca is None else bool(zca)
        if self.use_zca and not plan.zca_ok:
            d = plan.in_channels * plan.input_size ** 2
            raise UserError(f"'{arch}' cannot whiten its input with ZCA: whole-image ZCA of "
                            f"{plan.input_size}x{plan.input_size}x{plan.in_channels} images needs a {d:,} x {d:,} "
                            f"matrix ({d * d * 4 / 1e9:,.0f} GB); build it with zca=False")
        cut_layer = len(plan.layers) if cut_layer is None else int(cut_layer)
        if not 1 <= cut_layer <= len(plan.layers):
            raise UserError(f"layer must be in 1..{len(plan.layers)}, got {cut_layer}")
        self.cut_layer = cut_layer

        channels = plan.in_channels
        self.layers = nn.ModuleList()
        for kind, lp in zip(self.spec[:cut_layer], plan.layers[:cut_layer]):
            self.layers.append(FeatureLayer(kind, channels, lp, rule, temperature))
            channels = lp.out_channels
        self.dropout = Dropout(0.5)
        self.classifier = self._make_classifier(self._flat_dim(plan, cut_layer))

        d = plan.in_channels * plan.input_size ** 2
        self.register_buffer("input_mean", torch.tensor(CIFAR_MEAN[: plan.in_channels]))
        self.register_buffer("input_std", torch.tensor(CIFAR_STD[: plan.in_channels]))
        # ZCA over the whole (normalised) image, as the reference did; identity until fitted.
        self.register_buffer("zca_mean", torch.zeros(d if self.use_zca else 0))
        self.register_buffer("zca_matrix", torch.eye(d) if self.use_zca else torch.zeros(0, 0))
        self.register_buffer("input_fitted", torch.tensor(False))

    def _make_classifier(self, in_features: int) -> nn.Module:
        """The read-out the spec's last letter asks for: linear (G), frozen linear (R) or Hebbian (H)."""
        kind = self.spec[-1]
        if kind == "H":
            return HebbianClassifier(in_features, self.num_classes, self.classifier_rule)
        head = nn.Linear(in_features, self.num_classes)
        if kind == "R":
            head.requires_grad_(False)
        return head

    @property
    def classifier_kind(self) -> str:
        """"G" (linear, backprop), "R" (linear, frozen) or "H" (`HebbianClassifier`)."""
        return self.spec[-1]

    @property
    def classifier_rule(self) -> str:
        """Rule of a Hebbian classifier: the net's Hebbian rule, soft-WTA for the other nets."""
        return self.rule if self.rule in HEBBIAN_RULES else "swta"

    @staticmethod
    def _flat_dim(plan: ArchPlan, layer: int) -> int:
        channels, size = layer_shapes(plan)[layer - 1]
        return channels * size * size

    # ------------------------------------------------------------------------------------------ info

    @property
    def num_feature_layers(self) -> int:
        """Feature layers this net has (its architecture's depth, fewer once cut)."""
        return len(self.layers)

    def feature_shape(self, layer: int) -> tuple[int, ...]:
        """Shape of one image's `features(x, layer)` output, without running the net."""
        self._check_layer(layer)
        plan = ARCHITECTURES[self.arch]
        channels, size = layer_shapes(plan)[layer - 1]
        return (channels,) if plan.top_fc and layer == len(plan.layers) else (channels, size, size)

    def config(self) -> dict:
        """JSON-able constructor arguments: `HebbNet(**net.config())` rebuilds the same structure."""
        return {"arch": self.arch, "num_classes": self.num_classes, "rule": self.rule, "spec": self.spec,
                "cut_layer": self.cut_layer, "zca": self.use_zca, "temperature": self.temperature}

    def first_layer_kernels(self) -> torch.Tensor:
        """The learned layer-1 kernels, float32 on the CPU (for drawing), e.g. (96, 3, 5, 5) for the 6-layer
        net."""
        return self.layers[0].conv.weight.detach().float().cpu().clone()

    def hebbian_modules(self) -> list[tuple[int, nn.Module]]:
        """(layer number, HebbConv2d) of every Hebbian layer, bottom up."""
        return [(i + 1, layer.conv) for i, layer in enumerate(self.layers) if layer.kind == "H"]

    def set_hebbian_learning(self, on: bool) -> None:
        """Switch the local Hebbian updates of every Hebbian layer on or off (they act in training mode)."""
        for _, conv in self.hebbian_modules():
            conv.hebbian_learning = on

    # ------------------------------------------------------------------------------------------ input

    @torch.no_grad()
    def fit_input(self, images: torch.Tensor, max_images: int = 10_000, zca_eps: float = 0.1,
                  seed: int = 0) -> None:
        """Fit the input normalisation (and ZCA whitening when used) on uint8 training images (N, 3, H, W).

        At most `max_images` images, a seeded sample, are used; the work runs on the buffers' device.
        """
        device = self.input_mean.device
        if len(images) == 0:
            raise UserError("cannot fit the input normalisation on zero images")
        if len(images) > max_images:
            g = torch.Generator().manual_seed(seed)
            images = images[torch.randperm(len(images), generator=g)[:max_images]]
        x = images.to(device).float().div_(255.0)
        self.input_mean.copy_(x.mean(dim=(0, 2, 3)))
        self.input_std.copy_(x.std(dim=(0, 2, 3)).clamp_min(1e-6))
        if self.use_zca:
            x = ((x - self.input_mean.view(1, -1, 1, 1)) / self.input_std.view(1, -1, 1, 1)).flatten(1)
            x = x.double()
            mean = x.mean(0)
            x -= mean
            cov = x.T @ x / max(1, len(x) - 1)
            evals, evecs = torch.linalg.eigh(cov)
            w = evecs @ torch.diag((evals.clamp_min(0) + zca_eps).rsqrt()) @ evecs.T
            self.zca_mean.copy_(mean.float())
            self.zca_matrix.copy_(w.float())
        self.input_fitted.fill_(True)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """Float images in [0, 1] -> the normalised (and whitened) input of layer 1."""
        x = (x - self.input_mean.view(1, -1, 1, 1)) / self.input_std.view(1, -1, 1, 1)
        if self.use_zca:
            shape = x.shape
            x = ((x.flatten(1) - self.zca_mean) @ self.zca_matrix).view(shape)
        return x

    # ------------------------------------------------------------------------------------------ forward

    def _check_layer(self, layer: int) -> None:
        if not 1 <= layer <= self.num_feature_layers:
            raise UserError(f"layer must be in 1..{self.num_feature_layers}, got {layer}")

    def features(self, x: torch.Tensor, layer: int | None = None) -> torch.Tensor:
        """Activation after feature layer `layer` (1..num_feature_layers, after its BN; default: the last).

        x: float (N, 3, S, S) in [0, 1], S = `input_size` (the architecture's). Conv layers give (N, C, H, W);
        a fully connected top layer (the 6- and 10-layer nets') gives (N, 4096).
        """
        layer = self.num_feature_layers if layer is None else layer
        self._check_layer(layer)
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise UserError(f"the network takes {self.input_size}x{self.input_size} images, got "
                            f"{tuple(x.shape[-2:])}")
        x = self.preprocess(x)
        for block in self.layers[:layer]:
            x = block(x)
        plan = ARCHITECTURES[self.arch]
        if plan.top_fc and layer == len(plan.layers):
            x = x.flatten(1)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of float images in [0, 1]."""
        x = self.features(x).flatten(1)
        return self.classifier(x if self.classifier_kind == "H" else self.dropout(x))

    # ------------------------------------------------------------------------------------------ cutting

    def cut(self, layer: int, num_classes: int | None = None, classifier: str | None = None) -> "HebbNet":
        """Drop the layers above `layer` and put a fresh classifier on it (in place).

        classifier: "G", "R" or "H" (see the module docstring); None keeps the spec's kind. Returns self. The
        new classifier is on the net's device; `cut_layer` records the cut and `spec` the classifier kind.
        """
        self._check_layer(layer)
        if classifier is not None:
            if classifier.upper() not in ("G", "R", "H"):
                raise UserError(f"classifier must be G, R or H, got '{classifier}'")
            self.spec = self.spec[:-1] + classifier.upper()
        device = self.input_mean.device
        plan = ARCHITECTURES[self.arch]
        del self.layers[layer:]
        self.cut_layer = layer
        self.num_classes = int(num_classes or self.num_classes)
        self.classifier = self._make_classifier(self._flat_dim(plan, layer)).to(device)
        return self


def build_network(arch: str = DEFAULT_ARCH, num_classes: int = 10, rule: str = "hpca", spec: str | None = None,
                  **options) -> HebbNet:
    """Build a network of `arch` (see `ARCHITECTURES`).

    arch: a registry name (default: the registry's first, the 6-layer net; `arch_help()` lists them).
    rule: "hpca" | "swta" | "wta" | "softhebb" (the rule of the H layers; default spec all H and a G
    classifier, "HHHHHG" on the 6-layer net), "sgd" / "vae" (all G), "random" (feature layers R, classifier G).
    spec: one letter per layer (H, G, R), classifier last (depth + 1 letters); an H classifier
    (`HebbianClassifier`) is allowed with every rule, H feature layers only with a Hebbian one. options:
    cut_layer (1..depth, default: all layers), zca (default: True for swta/wta where the architecture allows
    whole-image ZCA, `ArchPlan.zca_ok`), temperature (soft-WTA, 0.02).
    """
    return HebbNet(arch=arch, num_classes=num_classes, rule=rule, spec=spec, **options)


def trainable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Parameters that backprop may change (R layers excluded)."""
    return [p for p in net.parameters() if p.requires_grad]

