"""A durable outbox: signed reports wait here (SQLite) until the coordinator's receipt says they are in its
ledger, across restarts and outages.
It also owns the report sequence counter, which must never go backwards."""

import sqlite3
import time
from pathlib import Path


class Outbox:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS outbox (seq INTEGER PRIMARY KEY, topic TEXT NOT NULL,"
            " payload BLOB NOT NULL, created REAL NOT NULL)"
        )

    def next_seq(self) -> int:
        with self._db:
            self._db.execute("BEGIN IMMEDIATE")
            row = self._db.execute("SELECT value FROM meta WHERE key = 'last_seq'").fetchone()
            seq = (row[0] if row else 0) + 1
            self._db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES ('last_seq', ?)", (seq,))
        return seq

    def add(self, seq: int, topic: str, payload: bytes) -> None:
        self._db.execute("INSERT INTO outbox (seq, topic, payload, created) VALUES (?, ?, ?, ?)",
                         (seq, topic, payload, time.time()))  # fmt: skip

    def pending(self) -> list[tuple[int, str, bytes]]:
        return self._db.execute("SELECT seq, topic, payload FROM outbox ORDER BY seq").fetchall()

    def acknowledge_through(self, seq: int) -> int:
        """The coordinator has every report up to `seq`: drop them; returns how many were waiting."""
        return self._db.execute("DELETE FROM outbox WHERE seq <= ?", (seq,)).rowcount

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]

    def close(self) -> None:
        self._db.close()
