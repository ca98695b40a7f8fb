"""`hwctl infer EXPERIMENT`: run a data set through an experiment's network as its chip holds
it, at a stored readout or now, through the REST API, with a progress bar.

    hwctl infer 3 --dataset 1 --at now --method gdc --gdc-statistic abs-weights
    hwctl infer 3 --input my_images.npz --at 12 --method none,gdc --adc-bits 8 --dac-bits 8

`--input` uploads the file as a data set first (stored once by content), so running the
same file again reuses it. Prints accuracy per method and repeat (with labels), the
readout used and its age, and the confusion matrix of the first result.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwctl.commands.errors import CLIError
from hwctl.commands.evaluate import add_gdc_statistic_argument
from hwctl.commands.experiment import _api_arguments, _methods
from hwctl.schedule import duration_label
from hwctl.vocabulary import TERMINAL_JOB_STATUSES

if TYPE_CHECKING:
    from hwctl.client import HwctlClient, Json

POLL_S = 0.2
MAX_CONFUSION_CLASSES = 20  # a larger matrix is in the API's summary, not on the terminal


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("infer", help="run a data set through an experiment's network on the chip")
    p.add_argument("experiment_id", type=int, metavar="EXPERIMENT")
    inputs = p.add_mutually_exclusive_group(required=True)
    inputs.add_argument("--dataset", type=int, metavar="ID", help="a data set id (GET /datasets; 1: digits, "
                                                                 "2: CIFAR-10 test)")  # fmt: skip
    inputs.add_argument("--input", type=Path, metavar="FILE", help=".npz (x, optional y, mean, std) or .npy")
    p.add_argument("--at", required=True, type=_at, metavar="READOUT|now",
                   help="a stored readout id of the experiment, or now (a fresh read of the chip)")
    p.add_argument("--method", type=_methods, default=None, metavar="M,M",
                   help="compensation methods: none, gdc, adabs (default: none)")
    add_gdc_statistic_argument(p, None)
    p.add_argument("--dac-bits", type=int, help="input DAC bits of every analog layer (default: ideal)")
    p.add_argument("--adc-bits", type=int, help="output ADC bits of every analog layer (default: ideal)")
    p.add_argument("--noise", type=float, default=0.0, metavar="REL",
                   help="per-MVM output noise σ relative to the output range (default 0)")
    p.add_argument("--repeats", type=int, default=1, help="fresh reads (now) or fresh noise (default 1)")
    p.add_argument("--top-k", type=int, default=1, metavar="K")
    p.add_argument("--logits", type=Path, metavar="OUT.npy", help="save the logits here")
    p.add_argument("--no-follow", action="store_true", help="submit and return at once")
    _api_arguments(p)
    p.set_defaults(func=run)


def _at(text: str) -> int | str:
    if text == "now":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--at is a readout id or now, not {text!r}") from None


def _spec(args: argparse.Namespace, dataset_id: int) -> dict[str, Any]:
    periphery: dict[str, Any] = {"output_noise_rel": args.noise}
    if args.dac_bits is not None:
        periphery["dac_bits"] = args.dac_bits
    if args.adc_bits is not None:
        periphery["adc_bits"] = args.adc_bits
    spec: dict[str, Any] = {"dataset_id": dataset_id, "at": args.at, "periphery": periphery,
                            "repeats": args.repeats, "top_k": args.top_k}  # fmt: skip
    if args.method:
        spec["methods"] = [str(m) for m in args.method]
    if args.gdc_statistic is not None:  # else the service's default
        spec["gdc_statistic"] = args.gdc_statistic
    return spec


def follow_job(client: HwctlClient, job_id: int, progress: bool = True) -> Json:
    """Poll the job until it ends, with a bar of its progress and message; its final row."""
    from tqdm import tqdm

    with tqdm(total=100, unit="%", disable=not progress, bar_format="{l_bar}{bar}| {elapsed}") as bar:
        while True:
            job = client.job(job_id)
            bar.n = round(100 * float(job["progress"]))
            bar.set_description(f"{job['status']}: {job['progress_message'] or 'waiting'}"[:48].ljust(48),
                                refresh=False)  # fmt: skip
            bar.refresh()
            if job["status"] in TERMINAL_JOB_STATUSES:
                return job
            time.sleep(POLL_S)


def result_lines(inference: Json) -> list[str]:
    summary = inference["summary"] or {}
    lines = []
    for read in summary.get("readouts", []):
        lines.append(f"readout {read['readout_id']}: {duration_label(read['t_since_program_s'])} "
                     "after programming")  # fmt: skip
    lines.append(f"{summary.get('n_images', 0)} images, {summary.get('n_classes', 0)} classes")
    if {"gdc", "adabs"} & set(summary.get("methods", [])):
        lines.append(f"GDC statistic: {inference['spec']['gdc_statistic']}")
    for r in summary.get("results", []):
        head = f"{r['method']:>6} repeat {r['repeat']} (readout {r['readout_id']})"
        if "accuracy_pct" in r:
            low, high = r["ci95_pct"]
            head += f": {r['accuracy_pct']:.2f} % [{low:.1f}, {high:.1f}]"
            if inference["spec"]["top_k"] > 1:
                head += f", top-{inference['spec']['top_k']} {r['top_k_accuracy_pct']:.2f} %"
        lines.append(head)
    first = next((r for r in summary.get("results", []) if "confusion" in r), None)
    if first is not None and len(first["confusion"]) <= MAX_CONFUSION_CLASSES:
        lines.append(f"confusion ({first['method']}, repeat {first['repeat']}): rows true, columns predicted")
        lines += [" ".join(f"{n:5d}" for n in row) for row in first["confusion"]]
    return lines


def run(args: argparse.Namespace) -> int:
    from hwctl.client import ApiError, HwctlClient

    with HwctlClient(args.api, args.api_key) as client:
        try:
            dataset_id = args.dataset
            if args.input is not None:
                if not args.input.is_file():
                    raise CLIError(f"--input {args.input}: no such file")
                dataset = client.upload_dataset(args.input)
                dataset_id = dataset["id"]
                print(f"data set {dataset_id}: {dataset['n_images']} images "
                      f"{'×'.join(map(str, dataset['image_shape']))}", flush=True)  # fmt: skip
            accepted = client.submit_inference(args.experiment_id, _spec(args, dataset_id))
            inference_id, job_id = accepted["inference"]["id"], accepted["job"]["id"]
            print(f"inference {inference_id} queued (job {job_id})", flush=True)
            if args.no_follow:
                return 0
            job = follow_job(client, job_id)
            if job["status"] != "succeeded":
                error = job["error"] or "no error recorded"
                raise CLIError(f"inference {inference_id} {job['status']}: {error}")
            print("\n".join(result_lines(client.inference(inference_id))))
            if args.logits is not None:
                args.logits.write_bytes(client.inference_logits(inference_id))
                print(f"logits written to {args.logits}")
        except ApiError as exc:
            raise CLIError(str(exc)) from None
    return 0
