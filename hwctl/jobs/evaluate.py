"""The evaluate job: accuracy of the network as read back, once per compensation method
of the experiment, in the compute lane (never touches the chip)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from sqlalchemy import Connection

from hwctl.experiment_spec import ExperimentSpec
from hwctl.jobs.context import JobContext, JobPayload, JobType
from hwctl.nn.evaluation import EvalResult, Images, ReadoutEvaluator
from hwctl.store import readouts as store_readouts
from hwctl.store.campaign import evaluated_methods, load_spec
from hwctl.store.datasets import evaluation_calibration_images, evaluation_test_images
from hwctl.store.networks import load_network
from hwctl.store.records import add_evaluation
from hwctl.vocabulary import CompensationMethod, JobKind, JobLane


class EvaluatePayload(JobPayload):
    run_id: int
    readout_id: int


def _evaluator(ctx: JobContext, conn: Connection, spec: ExperimentSpec, run_id: int) -> ReadoutEvaluator:
    """One evaluator per run and worker: the model, its device map, its calibration images
    and its GDC statistic."""

    def build() -> ReadoutEvaluator:
        evaluation = spec.evaluation
        calibration = evaluation_calibration_images(conn, evaluation)
        device_map = store_readouts.load_run_device_map(conn, run_id)
        return ReadoutEvaluator(load_network(conn, spec.network_id), device_map, calibration,
                                gdc_statistic=evaluation.gdc_statistic)  # fmt: skip

    evaluator: ReadoutEvaluator = ctx.cached(("evaluator", run_id), build)
    return evaluator


@dataclass(frozen=True)
class _Inputs:
    spec: ExperimentSpec
    done: set[CompensationMethod]
    evaluator: ReadoutEvaluator
    g_t_us: npt.NDArray[np.float32]
    g_t0_us: npt.NDArray[np.float32]
    t0_readout_ids: list[int]
    data: Images  # the test images, loaded once per run and worker


def handle(ctx: JobContext, payload: EvaluatePayload) -> None:
    readout_id = payload.readout_id

    def inputs(conn: Connection) -> _Inputs:
        spec = load_spec(conn, payload.experiment_id)
        readout = store_readouts.load_readout(conn, readout_id)
        g_t_us = readout.g_us
        # GDC's reference: the mean of the t0 draws stored so far (fewer for an early t0 draw).
        g_t0_us, t0_ids = store_readouts.t0_mean_us(conn, payload.run_id, readout)
        evaluator = _evaluator(ctx, conn, spec, payload.run_id)
        data: Images = ctx.cached(
            ("test_images", payload.run_id), lambda: evaluation_test_images(conn, spec.evaluation)
        )
        return _Inputs(spec, evaluated_methods(conn, readout_id), evaluator, g_t_us, g_t0_us, t0_ids, data)

    got = ctx.read("loading the readout", inputs)
    evaluation = got.spec.evaluation
    data = got.data
    accuracy: dict[str, float] = {}
    for index, method in enumerate(m for m in evaluation.methods if m not in got.done):
        ctx.safe_point(index / len(evaluation.methods), f"evaluating with {method}")
        result = got.evaluator.evaluate(data, got.g_t_us, method, got.g_t0_us)

        def store(conn: Connection, method: CompensationMethod = method, result: EvalResult = result) -> None:
            if method in evaluated_methods(conn, readout_id):  # stored by a commit whose answer was lost
                return
            add_evaluation(
                conn, readout_id, method=method, accuracy=result.accuracy, n_images=result.n_images,
                ci=(result.ci95_low, result.ci95_high),
                settings={"dataset": evaluation.dataset, "test_dataset_id": evaluation.test_dataset_id,
                          "t0_readout_id": got.t0_readout_ids[0],
                          "t0_reads": len(got.t0_readout_ids),
                          "gdc_statistic": evaluation.gdc_statistic},
            )  # fmt: skip

        ctx.write("storing the accuracy", store)
        accuracy[method] = result.accuracy
    ctx.complete({"readout_id": readout_id, "accuracy": accuracy})


JOB = JobType(JobKind.EVALUATE, JobLane.COMPUTE, EvaluatePayload, handle)
