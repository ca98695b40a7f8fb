"""Stored networks: a network row decoded into its checkpoint, the one way every job and report does it."""

from __future__ import annotations

from sqlalchemy import Connection, select

from hwctl.nn.models import Checkpoint, load_checkpoint
from hwctl.store.errors import NotFoundError
from hwctl.store.schema import networks


def load_network(conn: Connection, network_id: int) -> Checkpoint:
    """The network's checkpoint from its stored bytes or, for a registered file, its path."""
    row = conn.execute(select(networks).where(networks.c.id == network_id)).one_or_none()
    if row is None:
        raise NotFoundError(f"network {network_id} does not exist")
    source = row.checkpoint if row.checkpoint is not None else row.checkpoint_path
    return load_checkpoint(source, row.architecture)
