"""`hwctl train`: (noise-aware) training of a registered model, writing a recipe-tagged checkpoint."""

from __future__ import annotations

import argparse
import json

import torch

from hwctl.cli import CLIError
from hwctl.nn.data import load_dataset
from hwctl.nn.models import MODELS, build_model, load_checkpoint, model_spec, save_checkpoint
from hwctl.nn.training import TrainRecipe, train


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("train", help="train a network with PCM weight-noise injection")
    p.add_argument("--model", required=True, choices=sorted(MODELS))
    p.add_argument("--data", choices=("cifar10", "digits"), help="default: the model's dataset")
    p.add_argument("--eta", type=float, default=0.038, help="noise std as a fraction of max|W_l|")
    p.add_argument("--alpha", type=float, default=2.5, help="clip to ±alpha·std(W_l); 0 disables")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--lr", type=float, default=0.01)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--init", help="start from this checkpoint (hwctl or akamaster format)")
    p.add_argument("--out", required=True, help="checkpoint file, rewritten after every epoch")
    p.add_argument("--max-train-images", type=int)
    p.add_argument("--threads", type=int, help="torch intra-op threads (1 avoids stalls on a busy CPU)")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    data = args.data or model_spec(args.model).dataset
    if data != model_spec(args.model).dataset:
        raise CLIError(f"model {args.model} is for {model_spec(args.model).dataset}, not {data}")
    model = build_model(args.model)
    init_meta = None
    if args.init:
        ckpt = load_checkpoint(args.init, arch=args.model)
        if ckpt.arch != args.model:
            raise CLIError(f"--init holds a {ckpt.arch}, not a {args.model}")
        model.load_state_dict(ckpt.state_dict, strict=True)
        init_meta = ckpt.meta  # provenance of a fine-tune chain
    recipe = TrainRecipe(
        arch=args.model, data=data, eta=args.eta, alpha=args.alpha or None, epochs=args.epochs,
        lr=args.lr, weight_decay=args.weight_decay, batch_size=args.batch_size, seed=args.seed,
        init=args.init, max_train_images=args.max_train_images, augment=data == "cifar10",
    )
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    meta = train(model, recipe, load_dataset(data, "train"), load_dataset(data, "test"),
                 checkpoint_path=args.out, progress=not args.no_progress, init_meta=init_meta)
    save_checkpoint(args.out, args.model, model, meta)
    print(json.dumps({"out": args.out, "fp_test_accuracy": meta.get("fp_test_accuracy"),
                      "epochs": meta.get("epochs_done")}))
    return 0
