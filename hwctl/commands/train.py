"""`hwctl train`: (noise-aware) training of a registered model, writing a recipe-tagged checkpoint.

η is the recipe's default, chosen by hand (--eta), or measured on the lab's own chip
(--noise-from EXPERIMENT_ID: the programming error of that stored experiment). Torch
and the store load only when the command runs, so `hwctl --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import math

from hwctl.commands.errors import CLIError
from hwctl.nn.recipe import TrainRecipe


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a network with PCM weight-noise injection")
    p.add_argument("--model", required=True, help="registered model name, e.g. digits-resnet, resnet32")
    p.add_argument("--data", choices=("cifar10", "digits"), help="default: the model's dataset")
    noise = p.add_mutually_exclusive_group()
    noise.add_argument("--eta", type=float, default=TrainRecipe.eta,
                       help=f"noise std as a fraction of max|W_l| (default {TrainRecipe.eta})")  # fmt: skip
    noise.add_argument("--noise-from", type=int, metavar="EXPERIMENT_ID",
                       help="η from the programming error measured in this stored experiment")  # fmt: skip
    noise.add_argument("--pcm-noise", type=float, metavar="K",
                       help="instead of η: K times the device model's error of each weight at the "
                       "first read, sqrt(σ_prog(G)² + σ_read(G, t0)²) at its conductance G "
                       "(K = 1: the chip)")  # fmt: skip
    p.add_argument("--database-url", help="for --noise-from (default: HWCTL_DATABASE_URL or the settings)")
    p.add_argument("--alpha", type=float, default=TrainRecipe.alpha, help="clip to ±α·std(W_l); 0 disables")
    p.add_argument("--epochs", type=float, default=TrainRecipe.epochs)
    p.add_argument("--lr", type=float, default=TrainRecipe.lr)
    p.add_argument("--weight-decay", type=float, default=TrainRecipe.weight_decay)
    p.add_argument("--batch-size", type=int, default=TrainRecipe.batch_size)
    p.add_argument("--seed", type=int, default=TrainRecipe.seed)
    p.add_argument("--init", help="start from this checkpoint (hwctl or akamaster format)")
    p.add_argument("--out", required=True, help="checkpoint file, rewritten after every epoch")
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads (1 avoids stalls on a busy CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def measured_eta(experiment_id: int, database_url: str | None) -> float:
    """η from the programming error of a stored experiment's chip (pcm-model.md §7)."""
    from hwctl.report import training_noise_eta
    from hwctl.settings import get_settings
    from hwctl.store.engine import make_engine
    from hwctl.store.errors import StoreError
    from hwctl.store.migrate import ensure_migrated

    engine = make_engine(database_url or get_settings().database_url)
    try:
        ensure_migrated(engine)
        return training_noise_eta(engine, experiment_id)
    except StoreError as exc:  # unknown experiment, not read back yet, database not migrated
        raise CLIError(str(exc)) from None
    except ValueError as exc:  # no populated target bin to measure σ_prog in
        raise CLIError(f"experiment {experiment_id}: {exc}") from None
    finally:
        engine.dispose()


def run(args: argparse.Namespace) -> int:
    import torch

    from hwctl.nn.data import load_dataset
    from hwctl.nn.models import build_model, load_checkpoint, model_spec, save_checkpoint
    from hwctl.nn.training import train

    dataset = model_spec(args.model).dataset  # an unknown name lists the known ones
    data = args.data or dataset
    if data != dataset:
        raise CLIError(f"model {args.model} is for {dataset}, not {data}")
    if args.database_url and args.noise_from is None:
        raise CLIError("--database-url is only read with --noise-from")
    if args.pcm_noise is not None and not (math.isfinite(args.pcm_noise) and 0 < args.pcm_noise <= 10):
        raise CLIError(f"--pcm-noise is a factor in (0, 10], got {args.pcm_noise}")
    # NaN passes no comparison: --eta nan trained on NaN noise and wrote a useless checkpoint.
    for flag, value, least in (("--eta", args.eta, 0.0), ("--alpha", args.alpha, 0.0),
                               ("--weight-decay", args.weight_decay, 0.0)):  # fmt: skip
        if not least <= value < math.inf:
            raise CLIError(f"{flag} must be a finite number ≥ {least:g}, got {value}")
    for flag, value in (("--epochs", args.epochs), ("--lr", args.lr), ("--batch-size", args.batch_size)):
        if not 0 < value < math.inf:
            raise CLIError(f"{flag} must be a finite number > 0, got {value}")
    eta = args.eta if args.noise_from is None else measured_eta(args.noise_from, args.database_url)
    if args.pcm_noise is not None:
        eta = None
    model = build_model(args.model)
    init_meta = None
    if args.init:
        ckpt = load_checkpoint(args.init, arch=args.model)
        if ckpt.arch != args.model:
            raise CLIError(f"--init holds a {ckpt.arch}, not a {args.model}")
        model.load_state_dict(ckpt.state_dict, strict=True)
        init_meta = ckpt.meta  # provenance of a fine-tune chain
    recipe = TrainRecipe(
        arch=args.model, data=data, eta=eta, alpha=args.alpha or None, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size, seed=args.seed,
        init=args.init, max_train_images=args.max_train_images, augment=data == "cifar10",
        eta_from_experiment=args.noise_from, pcm_noise=args.pcm_noise,
    )  # fmt: skip
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = train(model, recipe, load_dataset(data, "train"), load_dataset(data, "test"),
                 checkpoint_path=args.out, progress=not args.no_progress, init_meta=init_meta)  # fmt: skip
    save_checkpoint(args.out, args.model, model, meta)
    summary = {
        "out": args.out, "eta": eta, "eta_from_experiment": args.noise_from, "pcm_noise": args.pcm_noise,
        "fp_test_accuracy": meta.get("fp_test_accuracy"), "epochs": meta.get("epochs_done"),
    }  # fmt: skip
    print(json.dumps(summary))
    return 0
