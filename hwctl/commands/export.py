"""`hwctl export`: a torch model from the user's own Python as an upload for the service (`.pt2`).

The model is a built-in architecture with its hwctl checkpoint, or comes from the user's
code: `path/to/file.py:NAME` or `package.module:NAME`, NAME being an `nn.Module` or a
callable that returns one (weights from `--checkpoint`, a state dict, if given). That
code runs here, on the user's machine, as their own program; the service reads only the
archive, as data (`hwctl.nn.exported`). The batch dimension is exported as dynamic. Before
the file is written, the archive is read back the way the service reads it and run
against the model on random inputs, so an export the service could not run is refused
here, with the operation named.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from hwctl.commands.errors import CLIError

if TYPE_CHECKING:  # torch loads when the command runs, not for `hwctl --help`
    from torch import nn

CHECK_BATCH = 3  # random inputs the read-back graph must agree on with the model


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("export", help="write a torch model as a .pt2 upload (torch.export)")
    p.add_argument("model", metavar="MODEL",
                   help="FILE.py:NAME or package.module:NAME (an nn.Module or a function returning one), "
                        "or a built-in architecture with --checkpoint")  # fmt: skip
    p.add_argument("--checkpoint", type=Path,
                   help="weights: an hwctl checkpoint for a built-in, else a state dict")  # fmt: skip
    p.add_argument("--input-shape", type=_shape, metavar="C,H,W",
                   help="one input without the batch dimension (default for built-ins: theirs)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="the .pt2 file to write")
    p.set_defaults(func=run)


def _shape(text: str) -> tuple[int, ...]:
    refused = argparse.ArgumentTypeError(f"a shape is positive integers separated by commas, not {text!r}")
    try:
        shape = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise refused from None
    if not shape or min(shape) < 1:
        raise refused
    return shape


def run(args: argparse.Namespace) -> int:
    import torch

    from hwctl.nn.exported import ExportedProgramError, read_exported_program
    from hwctl.nn.graph_module import ExportedModule

    model, shape = _model(args)
    model.eval()
    example = torch.rand(2, *shape)  # a dynamic dimension is traced from a size other than 1
    try:
        with _torch_quiet():
            program = torch.export.export(model, (example,), dynamic_shapes=({0: torch.export.Dim("batch")},))
    except Exception as exc:  # torch raises many kinds; each says what it could not trace
        raise CLIError(f"torch.export cannot trace {args.model}: {exc}") from None
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    archive = buffer.getvalue()
    try:
        network = read_exported_program(archive)
        uploaded = ExportedModule(network).eval()
    except ExportedProgramError as exc:
        raise CLIError(f"the service could not run this export: {exc}") from None
    check = torch.rand(CHECK_BATCH, *shape)
    with torch.no_grad():
        if not torch.allclose(uploaded(check), model(check), rtol=1e-4, atol=1e-5):
            raise CLIError("the exported graph, read back, does not compute what the model does")
    args.out.write_bytes(archive)
    weights = network.n_analog_weights
    print(json.dumps({
        "out": str(args.out), "bytes": len(archive), "input_shape": list(shape),
        "analog_layers": len(network.analog_weights), "analog_weights": weights, "devices": 2 * weights,
    }))  # fmt: skip
    return 0


@contextlib.contextmanager
def _torch_quiet() -> Iterator[None]:
    """torch.export prints the partial graph and logs warnings before it raises; the
    exception says what could not be traced, so the user gets that one message. What it
    wrote to stderr is passed on if the export succeeds."""
    written = io.StringIO()
    logging.disable(logging.ERROR)
    try:
        with contextlib.redirect_stderr(written):
            yield
    finally:
        logging.disable(logging.NOTSET)
    sys.stderr.write(written.getvalue())


def _model(args: argparse.Namespace) -> tuple[nn.Module, tuple[int, ...]]:
    """The model and the shape of one input."""
    import torch
    from torch import nn

    from hwctl.nn.models import load_checkpoint, model_spec

    if ":" not in args.model:  # a built-in architecture; an unknown name lists the known ones
        spec = model_spec(args.model)
        if args.checkpoint is None:
            raise CLIError(f"the built-in {args.model} needs its weights: --checkpoint FILE")
        checkpoint = load_checkpoint(args.checkpoint, args.model)
        if checkpoint.arch != args.model:
            raise CLIError(f"{args.checkpoint} holds a {checkpoint.arch}, not a {args.model}")
        return checkpoint.build(), args.input_shape or spec.input_shape
    where, _, name = args.model.rpartition(":")
    found = getattr(_import(where), name, None)
    if found is None:
        raise CLIError(f"{where} has no {name!r}")
    model = found if isinstance(found, nn.Module) else found() if callable(found) else None
    if not isinstance(model, nn.Module):
        raise CLIError(f"{args.model} is not an nn.Module nor a function returning one")
    if args.checkpoint is not None:
        state = torch.load(args.checkpoint, map_location="cpu", weights_only=True)
        model.load_state_dict(state.get("state_dict", state) if isinstance(state, dict) else state)
    if args.input_shape is None:
        raise CLIError("--input-shape C,H,W is needed for a model of your own")
    return model, args.input_shape


def _import(where: str) -> object:
    """The user's module, from a file path or by its importable name."""
    import importlib
    import importlib.util

    if where.endswith(".py"):
        path = Path(where)
        spec = importlib.util.spec_from_file_location(f"hwctl_export_{path.stem}", path)
        if spec is None or spec.loader is None or not path.is_file():
            raise CLIError(f"no Python file at {where}")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    try:
        return importlib.import_module(where)
    except ImportError as exc:
        raise CLIError(f"cannot import {where}: {exc}") from None
