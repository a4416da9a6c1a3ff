"""Identifiers: lowercase, time-ordered UUID version 7 (PROTOCOL §1)."""

from __future__ import annotations

import uuid

from uuid_utils import compat as _uuid_compat


def new_id() -> uuid.UUID:
    """A new UUIDv7 as a standard :class:`uuid.UUID` (time-ordered)."""
    return _uuid_compat.uuid7()


def parse_id(text: str) -> uuid.UUID:
    """Parse a UUID from text.

    Raises:
        ValueError: ``text`` is not a UUID.
    """
    return uuid.UUID(text)
