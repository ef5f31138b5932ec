"""The status database of a campaign: one row per output tile (its state, Slurm job, timings, output and checksum),
the campaign's settings, and an append-only history of every state change.

Only the campaign command writes it, one process at a time, on a login node: the Slurm jobs never open it. A job
writes a marker file beside its output when it starts and ends, and the command ingests those markers into the
database. That keeps a shared file system free of concurrent SQLite writers: SQLite's locking is not to be trusted
over NFS, and its WAL mode needs shared memory that network file systems do not provide, so the embedded database
uses the default rollback journal, with explicit ``BEGIN IMMEDIATE`` / ``COMMIT`` and a busy timeout.

The database is embedded SQLite by default (``campaign.sqlite`` in the campaign directory), or PostgreSQL when the
user gives a URL (through psycopg 3, imported only then). Both run the same SQL, written once below with ``?``
placeholders; a small adapter translates them for psycopg and turns every driver error into a one-line
:class:`StoreError` that names the database with its password masked. Several campaigns may share one PostgreSQL
database (or one SQLite file given by URL): every table carries a ``campaign`` column, the campaign's id.

Every public write is one transaction: a process killed in the middle of one leaves the database as it was before
it, and loses nothing committed. :meth:`Store.transaction` groups several writes into one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from mpi_s2.errors import InputError

STATES = ("planned", "submitted", "running", "done", "failed", "cancelled", "empty")
# empty: planned with no catalogue items (never submitted, reported). "submitted" with job_id None means a submission
# was started (sbatch may or may not have run); the row carries submit_token.

#: the file name of the default (SQLite) database in the campaign directory
DEFAULT_NAME = "campaign.sqlite"
#: how long a SQLite writer waits for another one's lock, and a PostgreSQL connection for its server (seconds)
BUSY_TIMEOUT_S = 30
CONNECT_TIMEOUT_S = 10


@dataclass
class TileRow:
    tile: str
    state: str
    items: int = 0
    attempts: int = 0
    job_id: str | None = None        # Slurm job id of the array
    array_task: int | None = None
    submit_token: str | None = None
    nodes: str | None = None
    started: str | None = None       # ISO 8601 UTC
    ended: str | None = None
    wall_s: float | None = None
    cpu_s: float | None = None
    output: str | None = None
    size: int | None = None
    checksum: str | None = None      # "sha256:<hex>"
    error: str | None = None         # last error line
    updated: str | None = None       # set by the store on every write


class StoreError(InputError):
    """The campaign database cannot be opened, read or written, or does not hold what was asked: one line that names
    the database (its URL with the password masked, or its file)."""


# --------------------------------------------------------------------------------------------------------- schema
_FIELDS = tuple(field.name for field in dataclasses.fields(TileRow))
#: the fields update() may set
_SETTABLE = frozenset(_FIELDS) - {"tile", "updated"}
_SQL_TYPES = {"items": "INTEGER NOT NULL DEFAULT 0", "attempts": "INTEGER NOT NULL DEFAULT 0",
              "array_task": "INTEGER", "wall_s": "DOUBLE PRECISION", "cpu_s": "DOUBLE PRECISION", "size": "BIGINT",
              "state": "TEXT NOT NULL"}
_TILE_COLUMNS = ", ".join(f"{name} {_SQL_TYPES.get(name, 'TEXT')}" for name in _FIELDS)
_TILE_SELECT = ", ".join(_FIELDS)

# All the SQL, with "?" placeholders (the adapter gives psycopg "%s"). {serial} is the backend's auto-increment key.
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS campaign (campaign TEXT NOT NULL, key TEXT NOT NULL, position INTEGER NOT NULL, "
    "value TEXT NOT NULL, PRIMARY KEY (campaign, key))",
    f"CREATE TABLE IF NOT EXISTS tiles (campaign TEXT NOT NULL, {_TILE_COLUMNS}, PRIMARY KEY (campaign, tile))",
    "CREATE TABLE IF NOT EXISTS events (id {serial}, campaign TEXT NOT NULL, at TEXT NOT NULL, tile TEXT NOT NULL, "
    "old_state TEXT, new_state TEXT NOT NULL, attempt INTEGER, job_id TEXT, error TEXT)",
    "CREATE INDEX IF NOT EXISTS events_tile ON events (campaign, tile)",
)
_CAMPAIGN_EXISTS = "SELECT 1 FROM campaign WHERE campaign = ? LIMIT 1"
_ANY_CAMPAIGN = "SELECT DISTINCT campaign FROM campaign ORDER BY campaign"
_INSERT_SETTING = "INSERT INTO campaign (campaign, key, position, value) VALUES (?, ?, ?, ?)"
_SETTINGS = "SELECT key, value FROM campaign WHERE campaign = ? ORDER BY position"
_INSERT_TILE = "INSERT INTO tiles (campaign, tile, state, items, attempts, updated) VALUES (?, ?, ?, ?, 0, ?)"
_TILES = f"SELECT {_TILE_SELECT} FROM tiles WHERE campaign = ?"
_TILE_FOR_UPDATE = "SELECT state, attempts, job_id, error FROM tiles WHERE campaign = ? AND tile = ?{for_update}"
_UPDATE_TILE = "UPDATE tiles SET {assignments} WHERE campaign = ? AND tile = ?"
_COUNTS = "SELECT state, COUNT(*) FROM tiles WHERE campaign = ? GROUP BY state"
_INSERT_EVENT = ("INSERT INTO events (campaign, at, tile, old_state, new_state, attempt, job_id, error) "
                 "VALUES (?, ?, ?, ?, ?, ?, ?, ?)")
_EVENTS = "SELECT at, tile, old_state, new_state, attempt, job_id, error FROM events WHERE campaign = ?"
_EVENT_KEYS = ("time", "tile", "old", "new", "attempt", "job_id", "error")
#: names per IN (...) list: far below SQLite's limit on bound parameters
_CHUNK = 500


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def mask_url(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` parameter) replaced by ``***``."""
    masked = re.sub(r"(?i)(password=)[^&\s]*", r"\1***", url)
    try:
        parts = urlsplit(masked)
    except ValueError:
        return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", masked)
    if "@" not in parts.netloc:
        return masked
    userinfo, host = parts.netloc.rsplit("@", 1)
    if ":" not in userinfo:
        return masked
    return urlunsplit(parts._replace(netloc=f"{userinfo.split(':', 1)[0]}:***@{host}"))


def _one_line(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    return "; ".join(lines) or type(error).__name__


# ------------------------------------------------------------------------------------------------------ adapters
class _Backend:
    """One connection in autocommit mode, whose transactions the store opens and ends itself with SQL."""

    begin = "BEGIN"
    serial = ""
    for_update = ""

    def __init__(self, where: str, secret: str | None = None):
        self.where = where
        self._secret = secret
        self.errors: tuple[type[BaseException], ...] = ()

    def error(self, error: BaseException | str) -> StoreError:
        message = error if isinstance(error, str) else _one_line(error)
        if self._secret:
            message = message.replace(self._secret, "***")
        return StoreError(f"campaign database {self.where}: {message}")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        raise NotImplementedError

    def table_exists(self, name: str) -> bool:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError


class _SQLite(_Backend):
    begin = "BEGIN IMMEDIATE"   # takes the write lock at once: no deadlock between two would-be writers
    serial = "INTEGER PRIMARY KEY"

    def __init__(self, path: str):
        super().__init__(path)
        self.errors = (sqlite3.Error,)
        try:
            self._connection = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        except sqlite3.Error as error:
            raise self.error(error) from None
        try:
            self.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
            # the rollback journal, whatever the file was set to before: WAL needs shared memory NFS does not have
            self.execute("PRAGMA journal_mode = DELETE")
            self.execute("PRAGMA synchronous = FULL")
        except StoreError:
            self._connection.close()
            raise

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            return self._connection.execute(sql, tuple(params)).fetchall()
        except sqlite3.Error as error:
            raise self.error(error) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            self._connection.executemany(sql, rows)
        except sqlite3.Error as error:
            raise self.error(error) from None

    def table_exists(self, name: str) -> bool:
        return bool(self.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (name,)))

    def close(self) -> None:
        self._connection.close()


class _Postgres(_Backend):
    serial = "BIGSERIAL PRIMARY KEY"
    for_update = " FOR UPDATE"

    def __init__(self, url: str):
        try:
            secret = urlsplit(url).password
        except ValueError:   # libpq says what is wrong with it
            secret = None
        super().__init__(mask_url(url), secret)
        try:
            import psycopg
        except ImportError:
            raise self.error("PostgreSQL needs psycopg 3 (apt-get install python3-psycopg)") from None
        self.errors = (psycopg.Error,)
        try:
            self._connection = psycopg.connect(url, autocommit=True, connect_timeout=CONNECT_TIMEOUT_S,
                                               application_name="mpi-s2 campaign")
        except psycopg.Error as error:
            raise self.error(error) from None

    @staticmethod
    def _sql(sql: str) -> str:
        return sql.replace("?", "%s")

    def execute(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        try:
            cursor = self._connection.execute(self._sql(sql), tuple(params) if params else None)
            return cursor.fetchall() if cursor.description is not None else []
        except self.errors as error:
            raise self.error(error) from None

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        try:
            with self._connection.cursor() as cursor:
                cursor.executemany(self._sql(sql), rows)
        except self.errors as error:
            raise self.error(error) from None

    def table_exists(self, name: str) -> bool:
        return self.execute("SELECT to_regclass(?)", (name,))[0][0] is not None

    def close(self) -> None:
        self._connection.close()


def open_store(directory: str, url: str | None = None, *, campaign: str | None = None) -> Store:
    """The campaign database of ``directory``: SQLite in ``directory/campaign.sqlite`` when ``url`` is None, the file
    of a ``sqlite:///abs/path`` URL, or the PostgreSQL database of a ``postgresql://user:pw@host:port/db`` (or
    ``postgres://``) URL. ``campaign`` names the campaign to read where the database holds several (by default the
    one it holds). A URL of another kind, or a database that cannot be opened, raises :class:`StoreError`."""
    if url is None:
        return Store(_SQLite(os.path.join(directory, DEFAULT_NAME)), campaign, exclusive=True)
    if url.startswith("sqlite:///"):
        return Store(_SQLite(url[len("sqlite://"):]), campaign)
    if url.startswith(("postgresql://", "postgres://")):
        return Store(_Postgres(url), campaign)
    raise StoreError(f"campaign database {mask_url(url)}: not a database URL (give sqlite:///absolute/path or "
                     f"postgresql://user:password@host:port/database)")


# ---------------------------------------------------------------------------------------------------------- store
def _states(states: str | Iterable[str], what: str) -> tuple[str, ...]:
    chosen = (states,) if isinstance(states, str) else tuple(states)
    unknown = [state for state in chosen if state not in STATES]
    if unknown:
        raise ValueError(f"{what}: unknown state {unknown[0]!r} (states: {', '.join(STATES)})")
    return chosen


class Store:
    """A campaign's status database (see the module's docstring). Open it with :func:`open_store`."""

    def __init__(self, backend: _Backend, campaign: str | None = None, exclusive: bool = False):
        self._db = backend
        self._id = campaign
        self._exclusive = exclusive   # the campaign directory's own file: one campaign only
        self._depth = 0
        self._closed = False

    # -------------------------------------------------------------------------------------------- transactions
    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Group the writes of the ``with`` block in one transaction: all of them are committed at its end, or none
        if it raises. Nested blocks are savepoints: an exception rolls back its own block only (and whatever it
        propagates to), and only the outermost block commits."""
        depth = self._depth
        self._db.execute(self._db.begin if depth == 0 else f"SAVEPOINT level{depth}")
        self._depth += 1
        try:
            yield
        except BaseException:
            self._depth = depth
            self._undo(depth)
            raise
        self._depth = depth
        if depth:
            self._db.execute(f"RELEASE SAVEPOINT level{depth}")
            return
        try:
            self._db.execute("COMMIT")
        except StoreError:
            self._undo(depth)
            raise

    def _undo(self, depth: int) -> None:
        """Roll back the transaction, or the savepoint at ``depth``; a failure here (a lost connection) leaves the
        error being handled the one the caller sees."""
        try:
            if depth:
                self._db.execute(f"ROLLBACK TO SAVEPOINT level{depth}")
                self._db.execute(f"RELEASE SAVEPOINT level{depth}")
            else:
                self._db.execute("ROLLBACK")
        except StoreError:
            pass

    # --------------------------------------------------------------------------------------------------- writes
    def create(self, campaign: dict, tiles: list[tuple[str, int]]) -> None:
        """Store a new campaign, ``campaign`` (its settings; ``campaign["id"]`` names it) and its tiles, given as
        ``(name, item_count)``: "empty" with no items, else "planned". Creates the tables where absent. Raises
        :class:`StoreError` if the database already holds this campaign (or, for the campaign directory's own
        file, any campaign)."""
        ident = campaign.get("id")
        if not isinstance(ident, str) or not ident:
            raise ValueError("a campaign needs an id, a non-empty string: campaign['id']")
        if self._id is not None and self._id != ident:
            raise ValueError(f"this store was opened for campaign {self._id!r}, not {ident!r}")
        settings = [(key, json.dumps(value)) for key, value in campaign.items()]
        names = [name for name, _ in tiles]
        if len(set(names)) != len(names):
            raise ValueError("a campaign's tiles need distinct names")
        for name, count in tiles:
            if not isinstance(name, str) or not name or not isinstance(count, int) or count < 0:
                raise ValueError(f"a tile is (name, item count >= 0), not {(name, count)!r}")
        now = _now()
        with self.transaction():
            for statement in _SCHEMA:
                self._db.execute(statement.format(serial=self._db.serial))
            present = [row[0] for row in self._db.execute(_ANY_CAMPAIGN)]
            if ident in present or (self._exclusive and present):
                raise StoreError(f"campaign database {self._db.where}: a campaign already exists in it "
                                 f"({', '.join(repr(name) for name in present)})")
            self._db.executemany(_INSERT_SETTING, [(ident, key, position, value)
                                                   for position, (key, value) in enumerate(settings)])
            states = [(name, "empty" if count == 0 else "planned", count) for name, count in tiles]
            self._db.executemany(_INSERT_TILE, [(ident, name, state, count, now) for name, state, count in states])
            self._db.executemany(_INSERT_EVENT, [(ident, now, name, None, state, 0, None, None)
                                                 for name, state, _ in states])
        self._id = ident

    def update(self, tile: str, expect: str | Iterable[str] | None = None, **fields: Any) -> bool:
        """Set ``fields`` (any :class:`TileRow` field but ``tile`` and ``updated``) of ``tile``; with ``expect``, only
        if its state now is one of those (compare-and-set): False, and nothing changed, when it is not. A change of
        state is recorded in :meth:`events` in the same transaction."""
        unknown = sorted(set(fields) - _SETTABLE)
        if unknown:
            raise ValueError(f"update of tile {tile}: unknown field {unknown[0]!r} (fields: {', '.join(_SETTABLE)})")
        if "state" in fields:
            _states(fields["state"], f"update of tile {tile}")
        for name in ("items", "attempts"):
            if name in fields and not isinstance(fields[name], int):
                raise ValueError(f"update of tile {tile}: {name} must be an integer, not {fields[name]!r}")
        expected = None if expect is None else _states(expect, f"update of tile {tile}")
        ident = self._campaign_id()
        with self.transaction():
            row = self._db.execute(_TILE_FOR_UPDATE.format(for_update=self._db.for_update), (ident, tile))
            if not row:
                raise StoreError(f"campaign database {self._db.where}: campaign {ident!r} has no tile {tile!r}")
            old, attempts, job_id, error = row[0]
            if expected is not None and old not in expected:
                return False
            values = {**fields, "updated": _now()}
            assignments = ", ".join(f"{name} = ?" for name in values)
            self._db.execute(_UPDATE_TILE.format(assignments=assignments), (*values.values(), ident, tile))
            new = fields.get("state", old)
            if new != old:
                after = {"attempts": attempts, "job_id": job_id, "error": error, **fields}
                self._db.execute(_INSERT_EVENT, (ident, values["updated"], tile, old, new, after["attempts"],
                                                 after["job_id"], after["error"]))
        return True

    # ---------------------------------------------------------------------------------------------------- reads
    def _campaign_id(self) -> str:
        if self._id is not None:
            return self._id
        present = [row[0] for row in self._db.execute(_ANY_CAMPAIGN)] if self._db.table_exists("campaign") else []
        if not present:
            raise StoreError(f"campaign database {self._db.where}: no campaign in it (create one first)")
        if len(present) > 1:
            raise StoreError(f"campaign database {self._db.where}: it holds several campaigns "
                             f"({', '.join(repr(name) for name in present)}): name the one to open")
        self._id = present[0]
        return present[0]

    def campaign(self) -> dict:
        """The campaign's settings, as :meth:`create` stored them (through JSON)."""
        ident = self._campaign_id()
        rows = self._db.execute(_SETTINGS, (ident,))
        if not rows:
            raise StoreError(f"campaign database {self._db.where}: no campaign {ident!r} in it")
        return {key: json.loads(value) for key, value in rows}

    def tiles(self, states: Iterable[str] | None = None, names: Iterable[str] | None = None) -> list[TileRow]:
        """The tiles (those in one of ``states``, of ``names`` when given), sorted by name."""
        ident = self._campaign_id()
        sql, params = _TILES, [ident]
        if states is not None:
            chosen = _states(states, "tiles")
            if not chosen:
                return []
            sql += f" AND state IN ({', '.join('?' * len(chosen))})"
            params += chosen
        if names is None:
            rows = self._db.execute(sql, params)
        else:
            wanted = sorted(set(names))
            rows = []
            for start in range(0, len(wanted), _CHUNK):
                chunk = wanted[start:start + _CHUNK]
                rows += self._db.execute(f"{sql} AND tile IN ({', '.join('?' * len(chunk))})", params + chunk)
        return sorted((TileRow(*row) for row in rows), key=lambda row: row.tile)

    def counts(self) -> dict[str, int]:
        """How many tiles are in each state (every state, 0 included)."""
        found = dict(self._db.execute(_COUNTS, (self._campaign_id(),)))
        return {state: int(found.get(state, 0)) for state in STATES}

    def events(self, tile: str | None = None) -> list[dict]:
        """The history of state changes (of ``tile`` when given), oldest first: dicts with ``time``, ``tile``,
        ``old`` (None when the campaign was created), ``new``, ``attempt``, ``job_id`` and ``error``."""
        sql, params = _EVENTS, [self._campaign_id()]
        if tile is not None:
            sql += " AND tile = ?"
            params.append(tile)
        return [dict(zip(_EVENT_KEYS, row, strict=True)) for row in self._db.execute(sql + " ORDER BY id", params)]

    # ---------------------------------------------------------------------------------------------------- close
    def close(self) -> None:
        """Close the connection (a transaction still open is rolled back)."""
        if not self._closed:
            self._closed = True
            self._db.close()

    def __enter__(self) -> Store:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()
