"""A small typed client of the hwctl REST API, for the command line.

`hwctl demo` and `hwctl experiment` go through the same HTTP API a lab script or the
dashboard uses, never around it, so what they show is what the service serves. Every
failure a user can act on (service down, bad request, unknown id) is an `ApiError`
carrying the server's problem detail, never an httpx traceback.

A 503 (the service's database is restarting) is retried for reads and for submissions
that carry an idempotency key, after the server's Retry-After (at most
`RETRY_WAIT_MAX_S`), up to `RETRIES_ON_503` times: a campaign followed from the command
line rides out a database restart.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from drivers.base import Geometry
from hwctl.experiment_spec import ExperimentSpec

API_KEY_HEADER = "X-API-Key"
PAGE_LIMIT = 500  # the API's largest page
RETRIES_ON_503 = 5
RETRY_WAIT_MAX_S = 2.0

Json = dict[str, Any]


class ApiError(RuntimeError):
    """The API could not be reached, or answered with an error (its detail is the message)."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class HwctlClient:
    """Calls of the hwctl API by name; JSON bodies come back as plain dicts."""

    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 30.0) -> None:
        headers = {API_KEY_HEADER: api_key} if api_key else {}
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout_s)

    # -- plumbing -------------------------------------------------------------------------
    def _request(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        repeatable = method == "GET" or "Idempotency-Key" in kwargs.get("headers", {})
        for _ in range(RETRIES_ON_503 if repeatable else 0):
            response = self._send(method, path, **kwargs)
            if response.status_code != 503:
                break
            time.sleep(_retry_after_s(response))
        else:  # not repeatable, or every retry was a 503: this answer stands
            response = self._send(method, path, **kwargs)
        if response.is_error:
            detail = _detail(response)
            raise ApiError(f"{method} {path}: {response.status_code} {detail}", response.status_code)
        return response

    def _send(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ApiError(
                f"cannot reach the hwctl API at {self.base_url} ({exc}); is `hwctl serve` running?"
            ) from None

    def _json(self, method: str, path: str, **kwargs: Any) -> Json:
        body: Json = self._request(method, path, **kwargs).json()
        return body

    def _all(self, path: str, **params: Any) -> list[Json]:
        """Every item of a paginated list."""
        items: list[Json] = []
        while True:
            page = self._json("GET", path, params={**params, "limit": PAGE_LIMIT, "offset": len(items)})
            items.extend(page["items"])
            if not page["items"] or len(items) >= page["total"]:
                return items

    # -- stations and networks ------------------------------------------------------------
    def station(self, name: str) -> Json | None:
        try:
            return self._json("GET", f"/stations/{name}")
        except ApiError as exc:
            if exc.status == 404:
                return None
            raise

    def ensure_station(
        self, name: str, resource: str, chip_serial: str, geometry: Geometry, clock_kind: str = "real"
    ) -> Json:
        """The station `name`, registered with these properties unless it already exists."""
        existing = self.station(name)
        if existing is not None:
            return existing
        body = {
            "name": name, "resource": resource, "chip_serial": chip_serial, "clock_kind": clock_kind,
            "geometry": {"tiles": geometry.tiles, "rows": geometry.rows, "cols": geometry.cols},
        }  # fmt: skip
        return self._json("POST", "/stations", json=body)

    def upload_network(self, checkpoint: bytes, filename: str, name: str | None = None) -> Json:
        files = {"file": (filename, checkpoint, "application/octet-stream")}
        return self._json("POST", "/networks", files=files, data={"name": name} if name else None)

    def upload_network_file(self, path: Path, name: str | None = None) -> Json:
        return self.upload_network(path.read_bytes(), path.name, name)

    def network(self, network_id: int) -> Json:
        return self._json("GET", f"/networks/{network_id}")

    # -- experiments and their results ----------------------------------------------------
    def submit_experiment(self, spec: ExperimentSpec, idempotency_key: str | None = None) -> Json:
        """POST /experiments: the stored experiment and its program job (202)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", "/experiments", json=spec.model_dump(mode="json"), headers=headers)

    def experiment(self, experiment_id: int) -> Json:
        """The experiment with its progress, readouts and evaluations so far."""
        return self._json("GET", f"/experiments/{experiment_id}")

    def cancel_experiment(self, experiment_id: int) -> Json:
        return self._json("POST", f"/experiments/{experiment_id}/cancel")

    def resume_experiment(self, experiment_id: int) -> Json:
        """Read on after the board lost its state (the operator judged it fit)."""
        return self._json("POST", f"/experiments/{experiment_id}/resume")

    def reprogram_experiment(self, experiment_id: int) -> Json:
        """Program again after the board lost its state: the experiment and its new program job."""
        return self._json("POST", f"/experiments/{experiment_id}/reprogram")

    def accuracy(self, experiment_id: int) -> list[Json]:
        """Accuracy per scheduled time and method: mean over read draws and programmings, spreads."""
        points: list[Json] = self._request("GET", f"/experiments/{experiment_id}/accuracy").json()
        return points

    def jobs(self, experiment_id: int, status: str | None = None) -> list[Json]:
        params: Json = {"experiment_id": experiment_id}
        if status is not None:
            params["status"] = status
        return self._all("/jobs", **params)

    def drift_fits(self, experiment_id: int) -> list[Json]:
        """Chip-level summaries of the experiment's drift fits, oldest first."""
        return self._all("/fits", experiment_id=experiment_id)

    def drift_fit_bins(self, fit_id: int) -> list[Json]:
        """Per target-conductance bin statistics of one fit, measured beside the model."""
        bins: list[Json] = self._json("GET", f"/fits/{fit_id}/bins")["bins"]
        return bins

    # -- data sets and inferences ------------------------------------------------------------
    def upload_dataset(self, path: Path, name: str | None = None) -> Json:
        """POST /datasets: the stored data set (the same bytes uploaded before: that one)."""
        files = {"file": (path.name, path.read_bytes(), "application/octet-stream")}
        return self._json("POST", "/datasets", files=files, data={"name": name} if name else None)

    def submit_inference(self, experiment_id: int, spec: Json, idempotency_key: str | None = None) -> Json:
        """POST /experiments/{id}/inferences: the inference and its job (202)."""
        headers = {"Idempotency-Key": idempotency_key} if idempotency_key else {}
        return self._json("POST", f"/experiments/{experiment_id}/inferences", json=spec, headers=headers)

    def inference(self, inference_id: int) -> Json:
        return self._json("GET", f"/inferences/{inference_id}")

    def inference_logits(self, inference_id: int) -> bytes:
        """The logits as .npy bytes: float32 (methods, repeats, images, classes)."""
        return self._request("GET", f"/inferences/{inference_id}/logits.npy").content

    def job(self, job_id: int) -> Json:
        return self._json("GET", f"/jobs/{job_id}")

    # -- lifetime -----------------------------------------------------------------------------
    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> HwctlClient:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


def _retry_after_s(response: httpx.Response) -> float:
    try:
        return min(float(response.headers.get("Retry-After", RETRY_WAIT_MAX_S)), RETRY_WAIT_MAX_S)
    except ValueError:  # an HTTP date: not what this API sends
        return RETRY_WAIT_MAX_S


def _detail(response: httpx.Response) -> str:
    """The problem detail of an error response, or its text."""
    try:
        body = response.json()
    except ValueError:
        return response.text.strip()[:500] or response.reason_phrase
    if isinstance(body, dict) and body.get("detail"):
        return str(body["detail"])
    return json.dumps(body)[:500]
