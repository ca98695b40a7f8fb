"""`hwctl worker --station NAME`: the process that owns one station's chip and runs its jobs.

Jobs run in two lanes, one job at a time in each: programming and readbacks in the chip
lane (which holds the driver), evaluation and drift analysis in the compute lane (a
second thread without the driver), so an evaluation never delays a readback.

SIGTERM and SIGINT ask for a graceful stop: the current block is finished and
committed, the board is put in its safe state, and the process exits 0; a command still
in flight after `HWCTL_STOP_GRACE_S` has its link aborted (the board's watchdog grounds
it). A lost link or a database restart never ends the process (see `hwctl.worker`).
"""

from __future__ import annotations

import logging
import signal
import threading
from types import FrameType
from typing import Any

from hwctl.commands.arguments import positive_number
from hwctl.commands.errors import CLIError


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser("worker", help="run the job worker of one station (owns its chip)")
    parser.add_argument("--station", required=True, help="name of a registered station")
    parser.add_argument(
        "--poll-s",
        type=positive_number,
        help="longest wall-clock wait between looks at the queue (default 0.5)",
    )
    parser.add_argument(
        "--block-devices",
        type=int,
        help="devices per readback block, the unit of checkpoints and stops (default 1,048,576)",
    )
    parser.set_defaults(func=run)


def run(args: Any) -> int:
    from hwctl.settings import get_settings
    from hwctl.store.errors import StoreError
    from hwctl.worker import WorkerError, WorkerOptions, run_worker

    given = {"poll_s": args.poll_s, "read_block_devices": args.block_devices}
    if any(value is not None and value <= 0 for value in given.values()):
        raise CLIError("--poll-s and --block-devices must be positive")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    stop = threading.Event()

    def request_stop(signum: int, _frame: FrameType | None) -> None:
        logging.getLogger(__name__).info("%s: stopping after the current block", signal.Signals(signum).name)
        stop.set()

    previous = {sig: signal.signal(sig, request_stop) for sig in (signal.SIGTERM, signal.SIGINT)}
    settings = get_settings()
    options = WorkerOptions.from_settings(settings, **{k: v for k, v in given.items() if v is not None})
    try:
        run_worker(settings, args.station, stop, options)
    except (WorkerError, StoreError) as exc:
        raise CLIError(str(exc)) from None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 0
