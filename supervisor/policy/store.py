"""The broker's SQLite file (WAL): run history (metadata only) and grants.

History never holds code or output: sizes, a SHA-256 of the code, status,
figures, counts. Retention is bounded by age and by row count.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable

import msgspec

from protocol import messages as m

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    started REAL NOT NULL,
    finished REAL NOT NULL,
    client_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    language TEXT NOT NULL,
    code_bytes INTEGER NOT NULL,
    code_sha256 TEXT NOT NULL,
    status TEXT NOT NULL,
    exit_code INTEGER,
    wall_ms REAL NOT NULL,
    cpu_ms REAL NOT NULL,
    memory_peak_bytes INTEGER NOT NULL,
    stdout_truncated INTEGER NOT NULL,
    stderr_truncated INTEGER NOT NULL,
    redactions TEXT NOT NULL,
    findings TEXT NOT NULL,
    capabilities TEXT NOT NULL,
    network TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_started ON runs (started);
CREATE INDEX IF NOT EXISTS runs_client ON runs (client_id, started);
CREATE TABLE IF NOT EXISTS grants (
    grant_id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    conversation_id TEXT NOT NULL,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL
);
CREATE INDEX IF NOT EXISTS grants_client ON grants (client_id);
"""
# Columns added since the first schema: a database made before them gets each
# (ALTER TABLE ... ADD COLUMN) when it is opened. Rows are read and written by
# column name, so the order columns were added in does not matter.
ADDED_COLUMNS = {
    "runs": [
        ("uid", "INTEGER"),
        ("session", "TEXT NOT NULL DEFAULT ''"),
        ("files_in", "TEXT NOT NULL DEFAULT '[]'"),
        ("files_out", "TEXT NOT NULL DEFAULT '[]'"),
    ]
}
RUN_COLUMNS = (
    "run_id, started, finished, client_id, conversation_id, language, code_bytes, code_sha256, status, exit_code, "
    "wall_ms, cpu_ms, memory_peak_bytes, stdout_truncated, stderr_truncated, redactions, findings, capabilities, "
    "network, uid, session, files_in, files_out"
)
RUN_VALUES = ", ".join("?" for _ in RUN_COLUMNS.split(","))
PRUNE_EVERY = 200
_files = msgspec.json.Decoder(list[m.FileRecord])


def migrate(db: sqlite3.Connection) -> None:
    """Add the columns a database made by an older version lacks."""
    for table, columns in ADDED_COLUMNS.items():
        have = {row[1] for row in db.execute(f"PRAGMA table_info({table})")}
        for name, kind in columns:
            if name not in have:
                db.execute(f"ALTER TABLE {table} ADD COLUMN {name} {kind}")


class Store:
    def __init__(self, directory: str, clock: Callable[[], float], retention_days: int, max_rows: int) -> None:
        os.makedirs(directory, mode=0o700, exist_ok=True)
        self.path = os.path.join(directory, "cellblock.sqlite")
        self.db = sqlite3.connect(self.path, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.executescript(SCHEMA)
        migrate(self.db)
        os.chmod(self.path, 0o600)
        self.clock = clock
        self.retention_s = retention_days * 86400
        self.max_rows = max_rows
        self._inserts = 0
        self.prune()

    def close(self) -> None:
        self.db.close()

    def hand_over(self, uid: int) -> None:
        """Before a privilege drop: the files, already open, now belong to ``uid``."""
        for suffix in ("", "-wal", "-shm"):
            if os.path.exists(self.path + suffix):
                os.chown(self.path + suffix, uid, uid)

    # --- history --------------------------------------------------------------------------

    def record(self, entry: m.HistoryEntry) -> None:
        self.db.execute(
            f"INSERT OR REPLACE INTO runs ({RUN_COLUMNS}) VALUES ({RUN_VALUES})",  # noqa: S608 - fixed names
            (
                entry.run_id,
                entry.started,
                entry.finished,
                entry.client_id,
                entry.conversation_id,
                entry.language,
                entry.code_bytes,
                entry.code_sha256,
                entry.status.value,
                entry.exit_code,
                entry.wall_ms,
                entry.cpu_ms,
                entry.memory_peak_bytes,
                int(entry.stdout_truncated),
                int(entry.stderr_truncated),
                json.dumps(entry.redactions),
                json.dumps(entry.findings),
                msgspec.json.encode(entry.capabilities).decode(),
                msgspec.json.encode(entry.network).decode(),
                entry.uid,
                entry.session,
                msgspec.json.encode(entry.files_in).decode(),
                msgspec.json.encode(entry.files_out).decode(),
            ),
        )
        self._inserts += 1
        if self._inserts % PRUNE_EVERY == 0:
            self.prune()

    def prune(self) -> None:
        self.db.execute("DELETE FROM runs WHERE started < ?", (self.clock() - self.retention_s,))
        self.db.execute(
            "DELETE FROM runs WHERE run_id IN (SELECT run_id FROM runs ORDER BY started DESC LIMIT -1 OFFSET ?)",
            (self.max_rows,),
        )

    def history(self, query: m.HistoryRequest) -> list[m.HistoryEntry]:
        where: list[str] = []
        args: list[object] = []
        for column, value in (
            ("client_id", query.client_id),
            ("conversation_id", query.conversation_id),
            ("language", query.language),
        ):
            if value:
                where.append(f"{column} = ?")
                args.append(value)
        if query.status is not None:
            where.append("status = ?")
            args.append(query.status.value)
        if query.since is not None:
            where.append("started >= ?")
            args.append(query.since)
        if query.before is not None:
            # Keyset paging: a page deep in the history costs what the first does.
            # The first term is an index range; an OR alone made SQLite sort every row.
            where.append("started <= ? AND (started < ? OR run_id < ?)")
            args += [query.before, query.before, query.before_run_id]
        # Only fixed column names are joined in; every value is a bound parameter.
        sql = f"SELECT {RUN_COLUMNS} FROM runs" + (" WHERE " + " AND ".join(where) if where else "")  # noqa: S608
        sql += " ORDER BY started DESC, run_id DESC LIMIT ?"
        args.append(query.limit)
        entries = []
        for row in self.db.execute(sql, args):
            entries.append(
                m.HistoryEntry(
                    run_id=row[0],
                    started=row[1],
                    finished=row[2],
                    client_id=row[3],
                    conversation_id=row[4],
                    language=row[5],
                    code_bytes=row[6],
                    code_sha256=row[7],
                    status=m.Status(row[8]),
                    exit_code=row[9],
                    wall_ms=row[10],
                    cpu_ms=row[11],
                    memory_peak_bytes=row[12],
                    stdout_truncated=bool(row[13]),
                    stderr_truncated=bool(row[14]),
                    redactions=json.loads(row[15]),
                    findings=json.loads(row[16]),
                    capabilities=msgspec.json.decode(row[17], type=list[m.Capability]),
                    network=msgspec.json.decode(row[18], type=list[m.NetDecision]),
                    uid=row[19],
                    session=row[20],
                    files_in=_files.decode(row[21]),
                    files_out=_files.decode(row[22]),
                )
            )
        return entries

    # --- grants ----------------------------------------------------------------------------

    def add_grant(
        self, client_id: str, conversation_id: str, capability: m.Capability, expires_in_s: int | None
    ) -> m.Grant:
        now = self.clock()
        expires = now + expires_in_s if expires_in_s else None
        cursor = self.db.execute(
            "INSERT INTO grants (client_id, conversation_id, kind, target, created, expires) VALUES (?,?,?,?,?,?)",
            (client_id, conversation_id, capability.kind.value, capability.target, now, expires),
        )
        grant_id = cursor.lastrowid
        assert grant_id is not None
        return m.Grant(
            grant_id=grant_id,
            client_id=client_id,
            conversation_id=conversation_id,
            capability=capability,
            created=now,
            expires=expires,
        )

    def revoke(self, grant_id: int) -> bool:
        return self.db.execute("DELETE FROM grants WHERE grant_id = ?", (grant_id,)).rowcount > 0

    def grants(self, client_id: str = "") -> list[m.Grant]:
        now = self.clock()
        self.db.execute("DELETE FROM grants WHERE expires IS NOT NULL AND expires < ?", (now,))
        sql = "SELECT grant_id, client_id, conversation_id, kind, target, created, expires FROM grants"
        args: list[object] = []
        if client_id:
            sql += " WHERE client_id = ?"
            args.append(client_id)
        return [
            m.Grant(
                grant_id=r[0],
                client_id=r[1],
                conversation_id=r[2],
                capability=m.Capability(m.CapabilityKind(r[3]), r[4]),
                created=r[5],
                expires=r[6],
            )
            for r in self.db.execute(sql + " ORDER BY grant_id", args)
        ]
