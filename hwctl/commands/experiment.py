"""`hwctl experiment run|show`: submit an experiment through the REST API, follow it, print its results.

The command is a client of a running service (`hwctl serve`): it uploads the network
if given a checkpoint file, submits the `ExperimentSpec`, shows a progress bar until
every job of the experiment has finished, then prints accuracy vs time (one row per
readout, one column per drift-compensation method) and the drift summary per target
bin. `hwctl demo` prints the same tables through the same functions.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from hwctl.commands.errors import CLIError
from hwctl.commands.evaluate import add_gdc_statistic_argument
from hwctl.schedule import duration_label
from hwctl.vocabulary import (
    DEFAULT_GDC_STATISTIC,
    METHOD_LABELS,
    CompensationMethod,
    JobStatus,
    gdc_statistic_text,
)

if TYPE_CHECKING:  # httpx, pydantic and numpy load when a command runs, not for `hwctl --help`
    from hwctl.client import HwctlClient, Json
    from hwctl.experiment_spec import ExperimentSpec

DEFAULT_API_URL = "http://127.0.0.1:8000"
FIRST_OFFSET_S = 25.0
POLL_S = 0.5
DESCRIPTION_CHARS = 44  # a fixed-width bar label, so a shorter one leaves nothing behind


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("experiment", help="submit an experiment to the API and follow it")
    sub = parser.add_subparsers(dest="action", required=True)

    run_p = sub.add_parser("run", help="program a network on a station, read it back, print accuracy")
    run_p.add_argument(
        "--network",
        required=True,
        metavar="CKPT_OR_ID",
        help="a checkpoint file to upload, or the id of an uploaded network",
    )
    run_p.add_argument("--station", required=True, help="name of a registered station")
    when = run_p.add_mutually_exclusive_group()
    when.add_argument(
        "--schedule-points",
        type=int,
        default=20,
        metavar="N",
        help="N readbacks log-spaced from 25 s to 24 h (default %(default)s)",
    )
    when.add_argument(
        "--offsets",
        type=_offsets,
        metavar="S,S,...",
        help="readback times in seconds after programming, e.g. 25,60,3600",
    )
    run_p.add_argument(
        "--reads-per-point",
        type=int,
        default=1,
        metavar="N",
        help="whole reads of the chip at each time, 1-16 (default %(default)s): the spread "
        "over them is the read noise's share",
    )
    run_p.add_argument(
        "--methods",
        type=_methods,
        default=list(CompensationMethod),
        metavar="M,M",
        help=f"compensation methods: {','.join(CompensationMethod)} (default: all)",
    )
    run_p.add_argument(
        "--dataset",
        choices=("digits", "cifar10"),
        help="test set (default: the network architecture's dataset)",
    )
    run_p.add_argument("--n-images", type=int, help="test images per evaluation (default: all)")
    add_gdc_statistic_argument(run_p, DEFAULT_GDC_STATISTIC)
    run_p.add_argument("--name", help="experiment name (default: NETWORK on STATION)")
    run_p.add_argument("--no-follow", action="store_true", help="submit and return at once")
    _api_arguments(run_p)
    run_p.set_defaults(func=run_experiment)

    show_p = sub.add_parser("show", help="progress and results of an experiment")
    show_p.add_argument("experiment_id", type=int, metavar="ID")
    _api_arguments(show_p)
    show_p.set_defaults(func=show_experiment)


def _api_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--api",
        default=os.environ.get("HWCTL_API_URL", DEFAULT_API_URL),
        help="base URL of the hwctl API (default: $HWCTL_API_URL or %(default)s)",
    )
    parser.add_argument(
        "--api-key",
        default=os.environ.get("HWCTL_API_KEY"),
        help="X-API-Key for a server with keys (default: $HWCTL_API_KEY)",
    )


def _offsets(text: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"offsets are seconds separated by commas, not {text!r}") from None


def _methods(text: str) -> list[CompensationMethod]:
    methods = [m.strip().lower() for m in text.split(",") if m.strip()]
    known = [str(m) for m in CompensationMethod]
    if not methods or set(methods) - set(known):
        raise argparse.ArgumentTypeError(f"methods are {', '.join(known)}; got {text!r}")
    return [CompensationMethod(m) for m in methods]


# -- following an experiment -----------------------------------------------------------------
def follow_experiment(
    client: HwctlClient,
    experiment_id: int,
    *,
    poll_s: float = POLL_S,
    check: Callable[[], None] | None = None,
    progress: bool = True,
) -> Json:
    """Poll until every job of the experiment is finished; returns the final experiment detail.

    The bar counts readouts; its label names the job running now. `check` is called on
    every poll so an embedded worker's failure stops the wait instead of hanging it.
    """
    from tqdm import tqdm

    detail = client.experiment(experiment_id)
    with tqdm(total=detail["progress"]["readouts_planned"], unit="readout", disable=not progress) as bar:
        while True:
            if check is not None:
                check()
            detail = client.experiment(experiment_id)
            counts = detail["progress"]
            bar.n = counts["readouts_done"]
            bar.set_description(_activity(client, experiment_id, detail["status"]), refresh=False)
            bar.refresh()
            if counts["jobs_total"] and counts["jobs_done"] == counts["jobs_total"]:
                return detail
            time.sleep(poll_s)


def _activity(client: HwctlClient, experiment_id: int, status: str) -> str:
    running = client.jobs(experiment_id, status=JobStatus.RUNNING)
    label = status
    if running:
        label = f"{running[0]['kind']}: {running[0]['progress_message'] or 'started'}"
    return label[:DESCRIPTION_CHARS].ljust(DESCRIPTION_CHARS)


# -- tables ------------------------------------------------------------------------------------
def format_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """Plain-text columns, right-aligned after the first."""
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells: Sequence[str]) -> str:
        first, *rest = (str(c) for c in cells)
        aligned = (c.rjust(w) for c, w in zip(rest, widths[1:], strict=True))
        return "  ".join([first.ljust(widths[0]), *aligned])

    return [line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)]


def accuracy_rows(
    detail: Json, readback_jobs: Sequence[Json], points: Sequence[Json] = ()
) -> tuple[list[str], list[list[str]]]:
    """Accuracy % per planned readout and method; a readout that did not happen says why.

    Beside the scheduled time since programming stands the readout's actual one (its
    start minus the end of programming), which differs when the readback ran late.
    `points` (GET /experiments/{id}/accuracy): where given, a cell is the mean over the
    reads at that time ± their standard deviation when there were several.
    """
    methods = list(detail["spec"]["evaluation"]["methods"])
    header = ["scheduled", "read at", *(f"{METHOD_LABELS[CompensationMethod(m)]} (%)" for m in methods)]
    readouts = {r["offset_s"]: r for r in detail["readouts"] if r.get("draw", 0) == 0}  # the first read
    accuracy = {(e["offset_s"], e["method"]): f"{e['accuracy']:.1f}" for e in detail["evaluations"]}
    for p in points:
        spread = "" if p["draw_std_pct"] is None else f" ± {p['draw_std_pct']:.1f}"
        accuracy[(p["offset_s"], p["method"])] = f"{p['accuracy_pct']:.1f}{spread}"
    job_status = {float(j["payload"]["offset_s"]): j["status"] for j in readback_jobs}
    rows = []
    for offset_s in detail["spec"]["schedule"]["offsets_s"]:
        readout = readouts.get(offset_s)
        if readout is None:
            why = job_status.get(offset_s, "not scheduled")
            rows.append([duration_label(offset_s), why, *(["–"] * len(methods))])
            continue
        age_s = readout["board_time_s"] - readout["scheduled_s"] + offset_s
        cells = [accuracy.get((offset_s, m), "–") for m in methods]
        rows.append([duration_label(offset_s), duration_label(age_s), *cells])
    return header, rows


def drift_lines(fit: Json, bins: Sequence[Json]) -> list[str]:
    """Per target bin: σ_prog, μ_ν and σ_ν measured beside the device model; then the fit's outcome."""
    header = ["G_T bin (µS)", "devices", "σ_prog µS meas/model", "μ_ν meas/model", "σ_ν meas/model"]
    rows = [
        [
            f"{b['target_lo_us']:g}–{b['target_hi_us']:g}", str(b["n_used"]),
            f"{_num(b['prog_sigma_us'])} / {_num(b['model_prog_sigma_us'])}",
            f"{_num(b['nu_mean'])} / {_num(b['model_nu_mean'])}",
            f"{_num(b['nu_sigma'])} / {_num(b['model_nu_sigma'])}",
        ]
        for b in bins
        if b["n_used"] > 0
    ]  # fmt: skip
    summary = fit["summary"]
    statuses = ", ".join(f"{k.replace('_', ' ')} {n:,}" for k, n in summary.get("status_counts", {}).items())
    outcome = f"{summary['n_fitted']:,} of {fit['n_devices']:,} devices fitted" + (
        f" (fit status: {statuses})" if statuses else ""
    )
    if not rows:
        return [f"(the API serves no per-bin statistics for fit {fit['id']})", outcome]
    return [*format_table(header, rows), outcome]


def _num(value: float | None) -> str:
    return "–" if value is None else f"{value:.3g}"


def result_lines(client: HwctlClient, detail: Json) -> list[str]:
    """The experiment's header, accuracy table and (once analysed) drift summary."""
    experiment_id = detail["id"]
    readbacks = [j for j in client.jobs(experiment_id) if j["kind"] == "readback"]
    failed = [j for j in client.jobs(experiment_id, status=JobStatus.FAILED)]
    lines = [
        f"experiment {experiment_id} '{detail['name']}' on {detail['station']}: {detail['status']}",
        "",
        "Accuracy (%) vs time since programming, per drift compensation "
        f"(GDC's statistic: {_gdc_statistic_label(detail)}):",
        *format_table(*accuracy_rows(detail, readbacks, client.accuracy(experiment_id))),
    ]
    fits = client.drift_fits(experiment_id)
    if fits:
        fit = fits[-1]
        lines += ["", "Drift per target-conductance bin (measured / model):",
                  *drift_lines(fit, client.drift_fit_bins(fit["id"]))]  # fmt: skip
    lines += [f"{j['kind']} job {j['id']} failed: {j['error']}" for j in failed]
    return lines


def _gdc_statistic_label(detail: Json) -> str:
    """The statistic GDC (and AdaBS's gains) used, as the report names it."""
    statistic = detail["spec"]["evaluation"].get("gdc_statistic") or DEFAULT_GDC_STATISTIC
    return gdc_statistic_text(statistic)


# -- the commands ---------------------------------------------------------------------------------
def _resolve_network(client: HwctlClient, network: str) -> Json:
    """An uploaded network by id, or a checkpoint file uploaded now."""
    if network.isdigit():
        return client.network(int(network))
    path = Path(network)
    if not path.is_file():
        raise CLIError(f"--network {network!r} is neither a network id nor a checkpoint file")
    return client.upload_network_file(path)


def _dataset_of(architecture: str) -> str:
    from hwctl.nn.models import UnknownModelError, model_spec  # torch loads only when needed

    try:
        return model_spec(architecture).dataset
    except UnknownModelError as exc:
        raise CLIError(f"{exc}; pass --dataset") from None


def _experiment_spec(args: argparse.Namespace, network: Json) -> ExperimentSpec:
    """The spec the flags describe; an invalid one is a CLI error worded as the API words it."""
    from pydantic import ValidationError

    from hwctl.experiment_spec import ExperimentSpec
    from hwctl.schedule import DAY_S, log_spaced_offsets_s

    offsets_s = args.offsets or log_spaced_offsets_s(FIRST_OFFSET_S, DAY_S, args.schedule_points)
    fields = {
        "network_id": network["id"], "station": args.station, "name": args.name,
        "schedule": {"offsets_s": offsets_s, "reads_per_point": args.reads_per_point},
        "evaluation": {"dataset": args.dataset or _dataset_of(network["architecture"]),
                       "methods": args.methods, "n_images": args.n_images,
                       "gdc_statistic": args.gdc_statistic},
    }  # fmt: skip
    try:
        return ExperimentSpec.model_validate(fields)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors())
        raise CLIError(f"invalid experiment: {problems}") from None


def run_experiment(args: argparse.Namespace) -> int:
    from hwctl.client import ApiError, HwctlClient

    with HwctlClient(args.api, args.api_key) as client:
        try:
            network = _resolve_network(client, args.network)
            experiment = client.submit_experiment(_experiment_spec(args, network))["experiment"]
            print(f"experiment {experiment['id']} submitted: {experiment['name']}", flush=True)
            if args.no_follow:
                return 0
            detail = follow_experiment(client, experiment["id"])
            print("\n".join(result_lines(client, detail)))
        except ApiError as exc:
            raise CLIError(str(exc)) from None
    return 0


def show_experiment(args: argparse.Namespace) -> int:
    from hwctl.client import ApiError, HwctlClient

    with HwctlClient(args.api, args.api_key) as client:
        try:
            detail = client.experiment(args.experiment_id)
            counts = detail["progress"]
            print("\n".join(result_lines(client, detail)))
            print(f"jobs {counts['jobs_done']}/{counts['jobs_total']} finished, "
                  f"readouts {counts['readouts_done']}/{counts['readouts_planned']}, "
                  f"evaluations {counts['evaluations_done']}")  # fmt: skip
        except ApiError as exc:
            raise CLIError(str(exc)) from None
    return 0
