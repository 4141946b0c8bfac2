"""`hebbir pretrain` and `hebbir finetune`: train networks and save them as checkpoints."""

from __future__ import annotations

import argparse
from pathlib import Path

from hebb.architectures import ARCHITECTURES, DEFAULT_ARCH, arch_help, layers_help
from hebb.recipes import UNTRAINED_METHODS, arch_for, methods
from hebb.runtime import resolve_device
from retrieval.commands.common import add_options, positive_int

#: The architecture with the largest input, for the examples.
_LARGEST = max(ARCHITECTURES, key=lambda name: ARCHITECTURES[name].input_size)


#: Pre-training methods of every registered architecture, in registry order.
PRETRAIN_RULES = tuple(m for m in methods() if m not in UNTRAINED_METHODS)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "pretrain", help="unsupervised pre-training (Hebbian rules or the VAE baseline)",
        description="Pre-train a network on all images of the training split, without labels. Hebbian rules: "
                    "hpca (Hebbian PCA), swta (soft winner-takes-all), wta (hard winner-takes-all), softhebb "
                    f"(SoftHebb: soft WTA with anti-Hebbian losers and a norm-adaptive rate, on the "
                    f"{arch_for('softhebb')} net; one epoch is its recipe); all Hebbian layers learn in the same forward pass. vae: the trunk "
                    "is trained as a VAE encoder (baseline). The checkpoint is rewritten after every epoch, so "
                    "an interrupted run keeps its last finished epoch; for vae (hours on a CPU) the "
                    "whole training state is kept beside it too (OUT.progress), and rerunning the same command "
                    "continues after the last finished epoch.",
        epilog="examples: hebbir pretrain --dataset cifar10 --rule hpca --epochs 5 --out models/hpca.pt\n"
               "          hebbir pretrain --dataset cifar10 --rule softhebb --epochs 1 --out models/softhebb.pt\n"
               f"          hebbir pretrain --dataset mine --arch {_LARGEST} --rule hpca --batch-size 16 "
               f"--out models/{_LARGEST}.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    add_options(p, "dataset")
    p.add_argument("--rule", required=True, help=f"learning rule: {' | '.join(PRETRAIN_RULES)}")
    add_arch(p, None, " (default: the first one built for the rule: "
             + ", ".join(f"{r} -> {arch_for(r)}" for r in PRETRAIN_RULES) + ")")
    p.add_argument("--spec", default=None,
                   help="layer kinds, one letter per layer, classifier last (" + ", ".join(
                       f"{len(a.layers) + 1} letters for {n}" for n, a in ARCHITECTURES.items())
                   + "): H Hebbian, G backprop, R random frozen (default: H layers and a G classifier; all G "
                     "for vae)")
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="passes over the images (default: 1 for softhebb, 5 otherwise)")
    add_options(p, "limit", "batch_size",
                limit={"help": "use only N images of the training split (a seeded random sample), for quick runs"},
                batch_size={"default": None, "help": "images per update (default: the architecture's: " + ", ".join(
                    f"{a.batch_size} for {n}" for n, a in ARCHITECTURES.items()) + ")"})
    p.add_argument("--lr", type=float, default=None,
                   help="learning rate (default: the reference's: " + ", ".join(
                       f"{a.hebbian_lr:g} for {n}" for n, a in ARCHITECTURES.items())
                   + "; for softhebb a multiplier of each block's own rate)")
    add_options(p, "split_seed")
    p.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    add_options(p, "data_dir", "device", "seed")
    add_distributed(p, "pretrain")
    p.set_defaults(func=_data_parallel(_pretrain))

    f = sub.add_parser(
        "finetune", help="supervised fine-tuning on a label regime (or an SGD / random baseline)",
        description="Cut a network after --layer, put dropout + a linear classifier on it and train it on the "
                    "labelled images of the regime (percent of the training split, stratified, seeded), keeping "
                    "the epoch with the best validation accuracy. --readout finetune (default) trains end to "
                    "end with the reference recipe: SGD with Nesterov momentum 0.9, lr 1e-3 for half the epochs "
                    f"then halved every epoch, L2 5e-2 (1e-2 for more than 10 classes; {_own_weight_decay()}). "
                    "--readout probe freezes the trunk, caches its features once and trains only the head "
                    "(SoftHebb's read-out: Adam lr 1e-3, 50 epochs, lr halved at epochs 10, 17, 25, 30, 35, 40, "
                    "45). With --classifier hebbian the trunk stays frozen and a Hebbian classifier learns from "
                    "the labels as a teacher signal (each class vector moves toward its class's mean feature; "
                    "lr 0.1, 2 epochs by default). Reports test accuracy at the end.",
        epilog="examples: hebbir finetune --init models/hpca.pt --regime 10 --layer 5 --out models/hpca-r10.pt\n"
               "          hebbir finetune --init models/softhebb.pt --readout probe --regime 1 --out models/sh-r1.pt\n"
               "          hebbir finetune --init models/hpca.pt --classifier hebbian --out models/hpca-hebb.pt",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    start = f.add_mutually_exclusive_group(required=True)
    start.add_argument("--init", type=Path, help="checkpoint to start from (from hebbir pretrain)")
    start.add_argument("--from-scratch", action="store_true", help="baseline: a fresh network trained by SGD only")
    start.add_argument("--from-random", action="store_true",
                       help="baseline: random frozen layers, only the classifier learns")
    add_arch(f, None, " for --from-scratch and --from-random; a checkpoint given by --init carries its own")
    add_options(f, "dataset")
    f.add_argument("--regime", type=float, default=10.0,
                   help="percent of the training split that carries labels, in (0, 100] (default: 10)")
    f.add_argument("--layer", type=int, default=None,
                   help=f"cut the network after this layer, {layers_help()} (default: the top layer)")
    f.add_argument("--readout", choices=("finetune", "probe", "probe-std", "probe-flip"), default="finetune",
                   help="finetune: train everything end to end (default); probe: frozen trunk, linear head on its "
                        "cached features; probe-std: the same head on features standardised per dimension; "
                        "probe-flip: the head trained on random horizontal flips (the mirrored images' features "
                        "are cached too)")
    f.add_argument("--classifier", choices=("linear", "hebbian"), default="linear",
                   help="linear: dropout + linear layer, everything trained by backprop (default); hebbian: "
                        "frozen trunk, classifier learned with the teacher-signal Hebbian rule")
    f.add_argument("--epochs", type=positive_int, default=None,
                   help="epochs (default: 20 for fine-tuning, 50 for a probe, 2 for a Hebbian classifier)")
    add_options(f, "batch_size", batch_size={"default": 64, "help": "images per step (default: 64)"})
    f.add_argument("--lr", type=float, default=None,
                   help="initial learning rate (default: 1e-3 for a linear classifier, 0.1 for a Hebbian one)")
    f.add_argument("--weight-decay", type=float, default=None,
                   help="L2 penalty (default for fine-tuning: 5e-2 for 10 classes, 1e-2 for more; "
                        f"{_own_weight_decay()}; for a probe: 0)")
    f.add_argument("--augment", action="store_true", help="random translations and flips of the training images")
    add_options(f, "limit", "split_seed", limit={
        "help": "cap the labelled, validation and test images at N each (seeded samples), for quick runs"})
    f.add_argument("--out", type=Path, required=True, help="checkpoint file to write")
    add_options(f, "data_dir", "device", "seed")
    add_distributed(f, "finetune")
    f.set_defaults(func=_data_parallel(_finetune))


def _own_weight_decay() -> str:
    """The architectures with a reference fine-tuning L2 penalty of their own, for help texts."""
    return ", ".join(f"{plan.weight_decay:g} for {name}" for name, plan in ARCHITECTURES.items()
                     if plan.weight_decay is not None)


def add_arch(p: argparse.ArgumentParser, default: str | None, when: str = "") -> None:
    """The --arch option: which network architecture to build (choices from the registry)."""
    p.add_argument("--arch", type=ARCHITECTURES.resolve, choices=tuple(ARCHITECTURES), default=default,
                   help=f"network: {arch_help()}{when}")  # an older name reads as its current one


def add_distributed(p: argparse.ArgumentParser, command: str) -> None:
    """The --distributed flag: data-parallel training over the processes torchrun starts."""
    p.add_argument("--distributed", action="store_true",
                   help="data-parallel training over the processes torchrun starts: torchrun --nproc-per-node N "
                        f"\"$(command -v hebbir)\" {command} --distributed ... (each process takes its share of "
                        "every batch; rank 0 writes --out; pre-training reaches the weights of one process)")


def _data_parallel(command):
    """`command` run inside the torchrun process group when --distributed is given."""
    def run(args: argparse.Namespace) -> int:
        if not args.distributed:
            return command(args)
        from hebb.distributed import process_group

        with process_group():
            return command(args)

    return run


def _pretrain(args: argparse.Namespace) -> int:
    from hebb import distributed
    from hebb.checkpoint import save_checkpoint
    from hebb.data import load_splits
    from hebb.errors import UserError
    from hebb.network import build_network
    from hebb.recipes import arch_for, pretrained_network, subsample

    rule = args.rule.lower()
    if rule not in PRETRAIN_RULES:
        raise UserError(f"unknown rule '{args.rule}' (choose one of: {', '.join(PRETRAIN_RULES)})")
    arch = arch_for(rule, args.arch)
    if args.lr is not None and not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    device = distributed.local_device(resolve_device(args.device))
    build_network(arch, rule=rule, spec=args.spec, cut_layer=1)  # a bad --spec fails before decoding
    splits = load_splits(args.dataset, args.data_dir, split_seed=args.split_seed,
                         size=ARCHITECTURES[arch].input_size)
    train = subsample(splits["train"], args.limit, args.seed)
    epochs = args.epochs or (1 if rule == "softhebb" else 5)
    settings = {"rule": rule, "arch": arch, "epochs": epochs, "seed": args.seed, "limit": args.limit,
                "device": str(device), "processes": distributed.world_size()}

    def save(epoch: int, net, stats: dict) -> None:
        if not distributed.is_main():
            return
        save_checkpoint(args.out, net, {
            "stage": "pretrain", "dataset": args.dataset, "split_seed": args.split_seed,
            "classes": list(train.classes), "training": dict(settings, batch_size=stats["batch_size"],
                                                             lr=stats["lr"]),
            "epochs_done": epoch, "timings": {k: stats[k] for k in ("time_s", "epoch_times_s", "images_per_s")}})

    resume = args.out.with_name(args.out.name + ".progress") if rule == "vae" else None
    net, stats = pretrained_network(rule, arch, train.images, len(train.classes), epochs=epochs,
                                    batch_size=args.batch_size, lr=args.lr, spec=args.spec, device=device,
                                    seed=args.seed, progress=distributed.is_main(), on_epoch_end=save,
                                    resume=resume)
    if distributed.is_main():
        print(f"pretrained {rule} ({arch} {net.spec}) on {len(train)} images: {stats['epochs']} epochs in "
              f"{stats['time_s']:.1f} s ({stats['images_per_s']:.0f} images/s on {device}); saved {args.out}")
    return 0


def _finetune(args: argparse.Namespace) -> int:
    from hebb import distributed
    from hebb.checkpoint import file_checksum, load_checkpoint, save_checkpoint
    from hebb.data import load_splits, regime_indices
    from hebb.errors import UserError
    from hebb.finetune import accuracy
    from hebb.recipes import pretrained_network, read_out, subsample

    if not 0 < args.regime <= 100:
        raise UserError(f"--regime must be a percentage in (0, 100], got {args.regime:g}")
    if args.init is not None and args.arch is not None:
        raise UserError("--arch is for --from-scratch and --from-random; a checkpoint given by --init carries "
                        "its own architecture")
    arch = args.arch or DEFAULT_ARCH  # with --init: the checkpoint's, checked below
    depth = len(ARCHITECTURES[arch].layers)
    if args.layer is not None and (args.layer < 1 or (args.init is None and args.layer > depth)):
        raise UserError(f"--layer must be in 1..{depth}, got {args.layer}")
    hebbian = args.classifier == "hebbian"
    readout = "hebbian" if hebbian else args.readout
    probing = readout in ("probe", "probe-std", "probe-flip")
    if hebbian and args.readout != "finetune":
        raise UserError(f"--classifier hebbian is its own read-out; leave out --readout {args.readout}")
    args.epochs = args.epochs or (50 if probing else {"hebbian": 2, "finetune": 20}[readout])
    args.lr = (0.1 if hebbian else 1e-3) if args.lr is None else args.lr
    if not args.lr > 0:
        raise UserError(f"--lr must be positive, got {args.lr}")
    if hebbian and args.from_scratch:
        raise UserError("--classifier hebbian reads a trunk that is already trained; it cannot train one from "
                        "scratch (use --init, or --from-random for random features)")
    if args.from_scratch and probing:
        raise UserError("--from-scratch trains the whole network; a probe needs a trained or random trunk "
                        "(--init or --from-random)")
    if hebbian and (args.augment or args.weight_decay is not None):
        raise UserError("--augment and --weight-decay apply to backprop; a Hebbian classifier takes neither")
    if probing and args.augment:
        raise UserError("--augment is for end-to-end fine-tuning; a probe reads cached features")
    device = distributed.local_device(resolve_device(args.device))
    init_meta = None
    if args.init is not None:
        net, init_meta = load_checkpoint(args.init, device)  # fail fast, before decoding the dataset
        arch, depth = net.arch, net.num_feature_layers
        if args.layer is not None and args.layer > depth:
            raise UserError(f"{args.init} ({arch}) has feature layers 1..{depth}; --layer must be in 1..{depth}, "
                            f"got {args.layer}")
    args.layer = args.layer or depth
    splits = load_splits(args.dataset, args.data_dir, split_seed=args.split_seed,
                         size=ARCHITECTURES[arch].input_size)
    classes = list(splits["train"].classes)
    if init_meta is not None and init_meta.get("classes") and init_meta["classes"] != classes \
            and init_meta.get("stage") == "finetune":
        raise UserError(f"{args.init} was fine-tuned on other classes than {args.dataset}'s")
    labelled = splits["train"].subset(regime_indices(splits["train"].labels, args.regime, args.seed))
    labelled = subsample(labelled, args.limit, args.seed)
    val = subsample(splits["val"], args.limit, args.seed)
    test = subsample(splits["test"], args.limit, args.seed)
    options = dict(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr)
    if not hebbian:
        options.update(weight_decay=args.weight_decay)
    if readout == "finetune":
        options.update(augment=args.augment)
    if args.init is None:
        method = "sgd" if args.from_scratch else "random"
        unlabelled = subsample(splits["train"], args.limit, args.seed).images  # input statistics
        spec = "R" * depth + ("H" if hebbian else "G") if method == "random" else None
        net, _ = pretrained_network(method, arch, unlabelled, len(classes), spec=spec, layer=args.layer,
                                    device=device, seed=args.seed, progress=False)
    else:
        method = init_meta.get("network", {}).get("rule", "?")
    net, stats = read_out(net, readout, labelled, val, layer=args.layer, device=device, seed=args.seed,
                          progress=distributed.is_main(), **options)
    if not distributed.is_main():
        return 0
    test_acc = accuracy(net, test.images, test.labels, device) if len(test) else {}
    save_checkpoint(args.out, net, {
        "stage": "finetune", "method": method, "dataset": args.dataset, "split_seed": args.split_seed,
        "classes": classes, "regime": args.regime, "layer": args.layer, "classifier": args.classifier,
        "readout": readout,
        "init": None if args.init is None else {"path": str(args.init), "sha256": file_checksum(args.init),
                                                "meta": init_meta},
        "training": {**options, "classifier": args.classifier, "readout": readout, "seed": args.seed,
                     "limit": args.limit, "device": str(device), "weight_decay": stats["weight_decay"],
                     "processes": distributed.world_size()},
        "timings": {k: stats[k] for k in ("time_s", "epoch_times_s", "images_per_s")},
        "metrics": {"val_acc": stats["val_acc"], "best_epoch": stats["best_epoch"],
                    **{f"test_{k}": v for k, v in test_acc.items()}},
        "history": stats["history"]})
    test_text = f", test acc {test_acc['top1']:.2%}" if test_acc else ""
    what = {"hebbian": "a Hebbian classifier on ", "probe": "a linear probe on ",
            "probe-std": "a linear probe (standardised features) on ",
            "probe-flip": "a linear probe (random horizontal flips) on ", "finetune": ""}[readout]
    verb = "trained" if probing else "fine-tuned"
    print(f"{verb} {what}{method} layer {args.layer} on {len(labelled)} labelled images ({args.regime:g}% regime): "
          f"{stats['epochs']} epochs in {stats['time_s']:.1f} s ({stats['images_per_s']:.0f} images/s on {device}); "
          f"best val acc {stats['val_acc']:.2%} (epoch {stats['best_epoch']}){test_text}; saved {args.out}")
    return 0
