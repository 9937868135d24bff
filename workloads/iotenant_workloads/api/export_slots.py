"""How many exports may stream at once, and how long a client may take no data before its export ends."""

from __future__ import annotations

# Exports one API process streams at once (each holds a database connection); more get 429.
MAX_CONCURRENT = 2

# How long a client may take no data before its export ends (it holds a connection and a transaction).
CLIENT_STALL_SECONDS = 60.0


class Exports:
    """How many exports stream now, bounded, and how long a client may take no data before its export ends."""

    def __init__(self, most: int = MAX_CONCURRENT, stall_seconds: float = CLIENT_STALL_SECONDS) -> None:
        self.most = most
        self.stall_seconds = stall_seconds
        self.running = 0
