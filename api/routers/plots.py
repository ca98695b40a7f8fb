"""An experiment's plots as images, drawn from what is stored (the dashboard embeds them)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query, Response

from api.deps import Db, ReadAccess
from api.params import PathId
from api.problems import problem_responses
from hwctl.analysis.plots import ImageFormat
from hwctl.heap import release_freed_heap
from hwctl.report import PLOT_NAMES, plot_bytes

router = APIRouter(prefix="/experiments", tags=["experiments"])
MEDIA_TYPES: dict[str, str] = {"png": "image/png", "svg": "image/svg+xml"}


@router.get(
    "/{experiment_id}/plots/{name}",
    response_class=Response,
    dependencies=[ReadAccess],
    responses={
        200: {"description": "the figure", "content": {media: {} for media in MEDIA_TYPES.values()}},
        **problem_responses(404, 422),
    },
)
def get_plot(
    experiment_id: PathId,
    name: Annotated[str, Path(description=f"one of {', '.join(PLOT_NAMES)}")],
    db: Db,
    format: Annotated[ImageFormat, Query(description="png, or svg to scale")] = "png",
) -> Response:
    """One figure of the experiment, from measured data only (no forecast).

    A plain `def`: drawing takes up to seconds, so it runs in the threadpool, never on
    the event loop.
    """
    try:
        image = plot_bytes(db, experiment_id, name, format)
    finally:
        release_freed_heap()  # what the plot read (up to a vector range, a figure) is freed
    return Response(image, media_type=MEDIA_TYPES[format])
