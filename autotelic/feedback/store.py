"""The label store: one SQLite file, shared by every run, so each label is paid for once.

Two tables, both keyed by (annotator, prompt_version, caption):

* `labels`  - the answer for a caption, stored exactly once (a unique constraint plus
  `ON CONFLICT DO NOTHING`, so a second writer of the same key changes nothing). Each row keeps the
  label (1 helpful, 0 unhelpful, NULL unless the status is `ok`), an optional score (the embedded
  annotator's similarity), the parse status (`ok`, `unparseable`, `error`), the raw reply, how
  many failed attempts preceded it, and when it was queued and labelled.
* `pending` - captions queued but not yet labelled. A labeller *claims* the oldest pending
  captions (FIFO, so old captions are never starved) for a lease that it renews while it works;
  a claim whose lease ran out (its process died) is free again. Writing a label and deleting its
  pending row happen in one transaction, so after a crash a caption is either labelled or still
  pending, never lost and never both.

Concurrency: the file is in WAL mode (readers never block the writer), every write transaction
starts with `BEGIN IMMEDIATE` (so two writers queue on the busy timeout instead of failing on a
lock upgrade), and each thread uses its own connection. Several processes may share one file on
one machine; SQLite's locking is not reliable on network file systems, so keep the store on a
local disk. `synchronous=NORMAL` in WAL mode survives a process crash; a power loss can drop the
last few transactions, which then come back as pending-or-unlabelled captions, never as wrong
labels.
"""

from __future__ import annotations

import csv
import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from ..errors import UserError

SCHEMA_VERSION = 1
STATUSES = ("ok", "unparseable", "error")
EXPORT_FORMATS = ("jsonl", "csv")
_CHUNK = 500  # captions per `IN (...)` query, well below SQLite's parameter limit

_SCHEMA = """
CREATE TABLE IF NOT EXISTS labels (
    id             INTEGER PRIMARY KEY AUTOINCREMENT,
    annotator      TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    caption        TEXT NOT NULL,
    label          INTEGER CHECK (label IN (0, 1)),
    score          REAL,
    status         TEXT NOT NULL CHECK (status IN ('ok', 'unparseable', 'error')),
    raw_reply      TEXT NOT NULL,
    attempts       INTEGER NOT NULL,
    queued_at      REAL,
    labelled_at    REAL NOT NULL,
    CHECK ((status = 'ok') = (label IS NOT NULL)),
    UNIQUE (annotator, prompt_version, caption)
);
CREATE TABLE IF NOT EXISTS pending (
    seq            INTEGER PRIMARY KEY AUTOINCREMENT,
    annotator      TEXT NOT NULL,
    prompt_version TEXT NOT NULL,
    caption        TEXT NOT NULL,
    queued_at      REAL NOT NULL,
    attempts       INTEGER NOT NULL DEFAULT 0,
    last_error     TEXT,
    not_before     REAL NOT NULL DEFAULT 0,
    claimed_by     TEXT,
    claimed_until  REAL,
    UNIQUE (annotator, prompt_version, caption)
);
CREATE INDEX IF NOT EXISTS pending_fifo ON pending (annotator, prompt_version, seq);
CREATE INDEX IF NOT EXISTS pending_owner ON pending (claimed_by);
"""


@dataclass(frozen=True)
class Label:
    """One stored answer. `label` is 1 (helpful), 0 (unhelpful) or None (status is not `ok`)."""

    caption: str
    annotator: str
    prompt_version: str
    label: int | None
    score: float | None
    status: str
    raw_reply: str
    attempts: int = 0
    queued_at: float | None = None
    labelled_at: float = 0.0
    id: int = 0  # order of arrival in the store; 0 until stored


@dataclass(frozen=True)
class Pending:
    caption: str
    annotator: str
    prompt_version: str
    queued_at: float
    attempts: int
    last_error: str | None
    claimed_by: str | None


def default_store_path() -> Path:
    """`$AUTOTELIC_LABEL_STORE`, else `$XDG_DATA_HOME/autotelic/labels.sqlite` (XDG_DATA_HOME
    defaults to ~/.local/share): one store per user, shared by all runs."""
    explicit = os.environ.get("AUTOTELIC_LABEL_STORE")
    if explicit:
        return Path(explicit)
    data_home = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data_home) / "autotelic" / "labels.sqlite"


_LABEL_COLUMNS = (
    "caption, annotator, prompt_version, label, score, status, raw_reply, attempts, "
    "queued_at, labelled_at, id"
)


def _label(row: Sequence) -> Label:
    return Label(*row)


def _chunks(items: Sequence[str], size: int = _CHUNK) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), size):
        yield items[start : start + size]


class LabelStore:
    """A label store at `path` (created with its directory unless `create=False`).

    Thread-safe: each thread gets its own connection. Process-safe: see the module docstring.
    `busy_timeout` (seconds) is how long a write waits for another writer before failing.
    """

    def __init__(self, path: str | os.PathLike, *, create: bool = True, busy_timeout: float = 60.0):
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._connections_lock = threading.Lock()
        if self.path.is_dir():
            raise UserError(f"label store {self.path} is a directory; give a file path.")
        if not self.path.exists():
            if not create:
                raise UserError(
                    f"no label store at {self.path}. Pass --store PATH (or set "
                    "AUTOTELIC_LABEL_STORE) to the file a run wrote its labels to."
                )
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as error:
                raise UserError(f"cannot create the label store's directory: {error}") from None
        self._setup()

    # ----------------------------------------------------------------------------- connections

    def _connect(self) -> sqlite3.Connection:
        try:
            conn = sqlite3.connect(
                self.path,
                timeout=self.busy_timeout,
                isolation_level=None,  # autocommit; write transactions are explicit
                check_same_thread=False,  # each thread still uses only its own connection
            )
            conn.execute(f"PRAGMA busy_timeout = {int(self.busy_timeout * 1000)}")
            conn.execute("PRAGMA synchronous = NORMAL")
        except sqlite3.Error as error:
            raise UserError(f"cannot open the label store {self.path}: {error}") from None
        with self._connections_lock:
            self._connections.append(conn)
        return conn

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        return conn

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        conn.execute("BEGIN IMMEDIATE")
        try:
            yield conn
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")

    def _setup(self) -> None:
        conn = self._conn()
        try:
            # Switching to WAL needs a moment of exclusive access; a busy peer makes it fail
            # with "database is locked" even inside the busy timeout, so retry briefly.
            deadline = time.monotonic() + self.busy_timeout
            while True:
                try:
                    mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
                    break
                except sqlite3.OperationalError as error:
                    if "locked" not in str(error) or time.monotonic() > deadline:
                        raise
                    time.sleep(0.05)
            if str(mode).lower() != "wal":
                raise UserError(
                    f"the label store {self.path} cannot use WAL mode (got {mode!r}); "
                    "put it on a local disk."
                )
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise UserError(
                    f"the label store {self.path} has schema version {version}, newer than this "
                    f"autotelic understands ({SCHEMA_VERSION}); upgrade autotelic."
                )
            if version < SCHEMA_VERSION:
                with self._write() as w:
                    for statement in _SCHEMA.split(";"):
                        if statement.strip():
                            w.execute(statement)
                    w.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
        except sqlite3.DatabaseError as error:
            self.close()
            raise UserError(f"{self.path} is not a usable label store: {error}") from None

    def close(self) -> None:
        with self._connections_lock:
            connections, self._connections = self._connections, []
        for conn in connections:
            conn.close()
        self._local = threading.local()

    def __enter__(self) -> LabelStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ---------------------------------------------------------------------------------- labels

    def _rows_for_captions(
        self, columns: str, table: str, captions: Iterable[str], annotator: str, version: str
    ) -> Iterator[Sequence]:
        """Rows of `table` under (annotator, version) whose caption is among `captions`."""
        unique = list(dict.fromkeys(captions))
        conn = self._conn()
        for chunk in _chunks(unique):
            marks = ",".join("?" * len(chunk))
            yield from conn.execute(
                f"SELECT {columns} FROM {table} WHERE annotator = ? AND prompt_version = ? "
                f"AND caption IN ({marks})",
                (annotator, version, *chunk),
            )

    def lookup(
        self, captions: Iterable[str], annotator: str, prompt_version: str
    ) -> dict[str, Label]:
        """The stored labels of `captions` (those that have one) under this annotator/version."""
        rows = self._rows_for_captions(
            _LABEL_COLUMNS, "labels", captions, annotator, prompt_version
        )
        return {row[0]: _label(row) for row in rows}

    def labels_since(
        self,
        after_id: int,
        annotator: str,
        prompt_version: str,
        limit: int = 10_000,
        with_reply: bool = True,
    ) -> list[Label]:
        """Labels stored after id `after_id`, in arrival order (ids grow with every commit, so a
        reader that remembers the last id it saw misses nothing). `with_reply=False` leaves
        `raw_reply` empty."""
        columns = _LABEL_COLUMNS if with_reply else _LABEL_COLUMNS.replace("raw_reply", "''")
        rows = self._conn().execute(
            f"SELECT {columns} FROM labels WHERE annotator = ? AND prompt_version = ? "
            "AND id > ? ORDER BY id LIMIT ?",
            (annotator, prompt_version, after_id, limit),
        )
        return [_label(row) for row in rows]

    def labels(
        self,
        annotator: str | None = None,
        prompt_version: str | None = None,
        status: str | None = None,
        limit: int | None = None,
    ) -> Iterator[Label]:
        """Stored labels in arrival order, optionally filtered."""
        where, args = [], []
        for column, value in (
            ("annotator", annotator),
            ("prompt_version", prompt_version),
            ("status", status),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        query = f"SELECT {_LABEL_COLUMNS} FROM labels"
        if where:
            query += " WHERE " + " AND ".join(where)
        query += " ORDER BY id"
        if limit is not None:
            query += " LIMIT ?"
            args.append(limit)
        for row in self._conn().execute(query, args):
            yield _label(row)

    def record(self, labels: Sequence[Label]) -> list[str]:
        """Store `labels` and take their captions off the pending queue, in one transaction.

        A caption that already has a label under the same annotator and prompt version keeps
        its first one. Returns the captions that were newly stored.
        """
        stored = []
        now = time.time()
        with self._write() as conn:
            for item in labels:
                if item.status not in STATUSES:
                    raise ValueError(f"status must be one of {STATUSES}, got {item.status!r}")
                if (item.status == "ok") != (item.label is not None):
                    raise ValueError(f"a label goes with status ok and only with it: {item}")
                key = (item.annotator, item.prompt_version, item.caption)
                queued = conn.execute(
                    "SELECT queued_at, attempts FROM pending "
                    "WHERE annotator = ? AND prompt_version = ? AND caption = ?",
                    key,
                ).fetchone()
                queued_at, attempts = queued if queued else (item.queued_at, item.attempts)
                cursor = conn.execute(
                    "INSERT INTO labels (annotator, prompt_version, caption, label, "
                    "score, status, raw_reply, attempts, queued_at, labelled_at) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
                    "ON CONFLICT (annotator, prompt_version, caption) DO NOTHING",
                    (
                        *key,
                        item.label,
                        item.score,
                        item.status,
                        item.raw_reply,
                        max(attempts, item.attempts),
                        queued_at,
                        item.labelled_at or now,
                    ),
                )
                if cursor.rowcount:
                    stored.append(item.caption)
                conn.execute(
                    "DELETE FROM pending "
                    "WHERE annotator = ? AND prompt_version = ? AND caption = ?",
                    key,
                )
        return stored

    # --------------------------------------------------------------------------------- pending

    def enqueue(self, captions: Iterable[str], annotator: str, prompt_version: str) -> list[str]:
        """Queue the captions that are neither labelled nor already pending; returns those."""
        unique = list(dict.fromkeys(captions))
        queued = []
        now = time.time()
        with self._write() as conn:
            for caption in unique:
                cursor = conn.execute(
                    "INSERT INTO pending (annotator, prompt_version, caption, queued_at) "
                    "SELECT ?, ?, ?, ? WHERE NOT EXISTS (SELECT 1 FROM labels "
                    "WHERE annotator = ? AND prompt_version = ? AND caption = ?) "
                    "ON CONFLICT (annotator, prompt_version, caption) DO NOTHING",
                    (annotator, prompt_version, caption, now, annotator, prompt_version, caption),
                )
                if cursor.rowcount:
                    queued.append(caption)
        return queued

    def claim(
        self, annotator: str, prompt_version: str, owner: str, limit: int, lease: float
    ) -> list[str]:
        """Claim up to `limit` of the oldest free pending captions for `lease` seconds.

        Free: unclaimed or with an expired lease, and not deferred (`not_before` in the past).
        """
        now = time.time()
        with self._write() as conn:
            rows = conn.execute(
                "SELECT seq, caption FROM pending WHERE annotator = ? AND prompt_version = ? "
                "AND not_before <= ? AND (claimed_by IS NULL OR claimed_until < ?) "
                "ORDER BY seq LIMIT ?",
                (annotator, prompt_version, now, now, limit),
            ).fetchall()
            if rows:
                marks = ",".join("?" * len(rows))
                conn.execute(
                    f"UPDATE pending SET claimed_by = ?, claimed_until = ? WHERE seq IN ({marks})",
                    (owner, now + lease, *(seq for seq, _ in rows)),
                )
        return [caption for _, caption in rows]

    def renew(self, owner: str, lease: float) -> int:
        """Extend every claim of `owner` by `lease` seconds from now; returns how many."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE pending SET claimed_until = ? WHERE claimed_by = ?",
                (time.time() + lease, owner),
            ).rowcount

    def release(
        self,
        captions: Iterable[str],
        annotator: str,
        prompt_version: str,
        owner: str,
        *,
        error: str | None = None,
        count_attempt: bool = False,
        retry_after: float = 0.0,
    ) -> None:
        """Give back claims of `owner` on `captions` without labelling them.

        `count_attempt` adds one failed attempt (and `error`) to each; `retry_after` defers
        them that many seconds so other captions go first meanwhile.
        """
        not_before = time.time() + retry_after
        with self._write() as conn:
            conn.executemany(
                "UPDATE pending SET claimed_by = NULL, claimed_until = NULL, "
                "attempts = attempts + ?, last_error = COALESCE(?, last_error), not_before = ? "
                "WHERE annotator = ? AND prompt_version = ? AND caption = ? AND claimed_by = ?",
                [
                    (int(count_attempt), error, not_before, annotator, prompt_version, c, owner)
                    for c in captions
                ],
            )

    def release_owner(self, owner: str) -> int:
        """Give back every claim of `owner` (a labeller that stops)."""
        with self._write() as conn:
            return conn.execute(
                "UPDATE pending SET claimed_by = NULL, claimed_until = NULL WHERE claimed_by = ?",
                (owner,),
            ).rowcount

    def attempts(
        self, captions: Iterable[str], annotator: str, prompt_version: str
    ) -> dict[str, int]:
        """Failed attempts so far of each pending caption among `captions`."""
        rows = self._rows_for_captions(
            "caption, attempts", "pending", captions, annotator, prompt_version
        )
        return dict(rows)

    def pending(
        self, annotator: str | None = None, prompt_version: str | None = None
    ) -> list[Pending]:
        """Pending captions, oldest first."""
        where, args = [], []
        if annotator is not None:
            where.append("annotator = ?")
            args.append(annotator)
        if prompt_version is not None:
            where.append("prompt_version = ?")
            args.append(prompt_version)
        query = (
            "SELECT caption, annotator, prompt_version, queued_at, attempts, last_error, "
            "claimed_by FROM pending"
        )
        if where:
            query += " WHERE " + " AND ".join(where)
        return [Pending(*row) for row in self._conn().execute(query + " ORDER BY seq", args)]

    # ---------------------------------------------------------------------------------- counts

    def counts(self) -> list[dict]:
        """One row per (annotator, prompt_version): labels by status, helpful, pending."""
        conn = self._conn()
        table: dict[tuple[str, str], dict] = {}

        def row(annotator: str, prompt_version: str) -> dict:
            return table.setdefault(
                (annotator, prompt_version),
                {
                    "annotator": annotator,
                    "prompt_version": prompt_version,
                    **{status: 0 for status in STATUSES},
                    "helpful": 0,
                    "pending": 0,
                },
            )

        for annotator, prompt_version, status, count, helpful in conn.execute(
            "SELECT annotator, prompt_version, status, COUNT(*), SUM(label = 1) FROM labels "
            "GROUP BY annotator, prompt_version, status"
        ):
            entry = row(annotator, prompt_version)
            entry[status] = count
            entry["helpful"] += helpful or 0
        for annotator, prompt_version, count in conn.execute(
            "SELECT annotator, prompt_version, COUNT(*) FROM pending "
            "GROUP BY annotator, prompt_version"
        ):
            row(annotator, prompt_version)["pending"] = count
        return [table[key] for key in sorted(table)]

    def integrity_check(self) -> str:
        return self._conn().execute("PRAGMA integrity_check").fetchone()[0]

    # ---------------------------------------------------------------------------------- export

    def export(
        self,
        path: str | os.PathLike,
        format: str | None = None,
        *,
        annotator: str | None = None,
        prompt_version: str | None = None,
        status: str | None = None,
    ) -> int:
        """Write the labels to `path` as JSONL or CSV (format from the suffix unless given).

        Written to a temporary name and renamed, so a reader never sees half a file. Returns
        the number of labels written.
        """
        path = Path(path)
        format = format or path.suffix.lstrip(".").lower()
        if format not in EXPORT_FORMATS:
            raise UserError(
                f"cannot tell the export format of {path}: name it *.jsonl or *.csv, "
                f"or pass one of {', '.join(EXPORT_FORMATS)} as the format."
            )
        temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        rows = self.labels(annotator, prompt_version, status)
        count = 0
        try:
            with open(temporary, "w", newline="", encoding="utf-8") as out:
                if format == "jsonl":
                    for item in rows:
                        out.write(json.dumps(asdict(item), ensure_ascii=False) + "\n")
                        count += 1
                else:
                    writer = csv.DictWriter(out, fieldnames=list(Label.__dataclass_fields__))
                    writer.writeheader()
                    for item in rows:
                        writer.writerow(asdict(item))
                        count += 1
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError as error:
            temporary.unlink(missing_ok=True)
            raise UserError(f"cannot write {path}: {error}") from None
        return count
