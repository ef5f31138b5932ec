"""The campaign database (mpi_s2/campaign/store.py) behaves the same on SQLite and PostgreSQL: every test runs on
both. The PostgreSQL server is a throw-away one (tests/postgres_server.py), started once for the module, with a new
database for each test; it needs Debian's postgresql and python3-psycopg, and the tests FAIL without them."""

from __future__ import annotations

import itertools
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mpi_s2.campaign.store import STATES, StoreError, TileRow, open_store
from mpi_s2.errors import InputError
from mpi_s2.tools.local_nginx import free_port

from conftest import require
from postgres_server import INSTALL, PostgresServer, missing

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = {"id": "c1", "grid": "MGRS", "bands": ["B04", "B03", "B02"], "resolution": 10.0,
            "slurm": {"partition": "cpu", "time": "01:00:00"}, "aoi": None, "ranks": 64}
TILES = [("32TQM", 12), ("31UFT", 0), ("33UUP", 3), ("32ULU", 7)]


def _psycopg_missing() -> str | None:
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg 3"
    return None


@pytest.fixture(scope="module")
def postgres():
    why = missing() or _psycopg_missing()
    require(why is None, why or "", INSTALL)
    with PostgresServer() as server:
        yield server


_databases = itertools.count()


@pytest.fixture(params=["sqlite", "postgresql"])
def place(request, tmp_path) -> tuple[str, str | None]:
    """Where a campaign's database lives: its directory and the URL (None: the directory's SQLite file)."""
    if request.param == "sqlite":
        return str(tmp_path), None
    server = request.getfixturevalue("postgres")
    return str(tmp_path), server.create_database(f"campaign_{next(_databases)}")


@pytest.fixture
def store(place):
    """A store holding SETTINGS' campaign with TILES."""
    with open_store(*place) as opened:
        opened.create(SETTINGS, TILES)
        yield opened


def _shared_url(place: tuple[str, str | None]) -> str:
    """A URL of the place's database that several campaigns may share."""
    directory, url = place
    return url or f"sqlite:///{os.path.join(directory, 'shared.sqlite')}"


# ------------------------------------------------------------------------------------------------- create, read
def test_create_and_read_back(place, store):
    assert store.campaign() == SETTINGS
    assert list(store.campaign()) == list(SETTINGS)   # the order of the settings too
    rows = store.tiles()
    assert [row.tile for row in rows] == sorted(name for name, _ in TILES)
    assert {row.tile: row.items for row in rows} == dict(TILES)
    for row in rows:
        assert row == TileRow(row.tile, row.state, items=row.items, updated=row.updated)
        assert row.updated and row.updated.endswith("Z")
    directory, url = place
    for again_url in [url] if url is None else [url, url.replace("postgresql://", "postgres://", 1)]:
        with open_store(directory, again_url) as again:   # another connection, later: the same
            assert again.campaign() == SETTINGS
            assert again.tiles() == rows
    assert [row.tile for row in store.tiles(names=["33UUP", "31UFT", "nope"])] == ["31UFT", "33UUP"]
    assert store.tiles(states=[]) == []
    assert store.tiles(names=[]) == []


def test_empty_tiles(store):
    assert [row.tile for row in store.tiles(states=["empty"])] == ["31UFT"]
    assert [row.tile for row in store.tiles(states="planned")] == ["32TQM", "32ULU", "33UUP"]
    assert store.counts()["empty"] == 1


def test_many_tiles(place):
    tiles = [(f"T{number:05d}", number % 3) for number in range(1500)]
    with open_store(*place) as store:
        store.create({"id": "big"}, tiles)
        assert len(store.tiles()) == 1500
        names = [name for name, _ in tiles[::-1][:1200]]   # more names than one IN (...) list takes
        assert [row.tile for row in store.tiles(names=names)] == sorted(names)
        assert [row.tile for row in store.tiles(states=["empty"], names=names)] == sorted(
            name for name, count in tiles[300:] if count == 0)
        assert store.counts() == {**dict.fromkeys(STATES, 0), "planned": 1000, "empty": 500}


def test_no_campaign_yet(place):
    with open_store(*place) as store, pytest.raises(StoreError, match="no campaign"):
        store.campaign()


def test_missing_directory(tmp_path):
    with pytest.raises(StoreError, match=f"campaign database {tmp_path}/absent/campaign.sqlite: "):
        open_store(str(tmp_path / "absent"))


def test_sqlite_uses_the_rollback_journal(tmp_path):
    """WAL needs shared memory that NFS does not give: the file stays in the default (delete) journal mode, even
    one set to WAL before."""
    path = tmp_path / "campaign.sqlite"
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode = WAL").fetchone() == ("wal",)
    connection.close()
    with open_store(str(tmp_path)) as store:
        store.create(SETTINGS, TILES)
        assert store.update("32TQM", state="submitted")
    connection = sqlite3.connect(path)
    assert connection.execute("PRAGMA journal_mode").fetchone() == ("delete",)
    connection.close()
    assert not (tmp_path / "campaign.sqlite-wal").exists()


# ------------------------------------------------------------------------------------------------------- update
def test_update_compare_and_set(store):
    before = store.tiles(names=["32TQM"])[0]
    time.sleep(0.002)
    assert store.update("32TQM", expect="planned", state="submitted", submit_token="tok-1", attempts=1)
    after = store.tiles(names=["32TQM"])[0]
    assert (after.state, after.submit_token, after.attempts, after.job_id) == ("submitted", "tok-1", 1, None)
    assert after.updated and before.updated and after.updated > before.updated
    # the state is no longer "planned": nothing changes, not even the time of the last write
    assert not store.update("32TQM", expect="planned", state="submitted", submit_token="tok-2", attempts=2)
    assert store.tiles(names=["32TQM"])[0] == after
    assert not store.update("32TQM", expect=("running", "done"), state="failed")
    assert store.update("32TQM", expect=["planned", "submitted"], job_id="4711", array_task=3)
    # without expect: always
    assert store.update("32TQM", state="done", nodes="n[01-04]", started="2024-05-01T10:00:00Z",
                        ended="2024-05-01T10:42:17Z", wall_s=2537.25, cpu_s=151234.5, output="/out/32TQM.tif",
                        size=6_000_000_000, checksum="sha256:" + "ab" * 32, error=None)
    row = store.tiles(names=["32TQM"])[0]
    assert row == TileRow("32TQM", "done", items=12, attempts=1, job_id="4711", array_task=3, submit_token="tok-1",
                          nodes="n[01-04]", started="2024-05-01T10:00:00Z", ended="2024-05-01T10:42:17Z",
                          wall_s=2537.25, cpu_s=151234.5, output="/out/32TQM.tif", size=6_000_000_000,
                          checksum="sha256:" + "ab" * 32, error=None, updated=row.updated)
    assert isinstance(row.size, int) and isinstance(row.wall_s, float)
    assert [other.state for other in store.tiles() if other.tile != "32TQM"] == ["empty", "planned", "planned"]


def test_update_rejects_what_it_does_not_know(store):
    before = store.tiles()
    with pytest.raises(ValueError, match="unknown field 'colour'"):
        store.update("32TQM", colour="red")
    with pytest.raises(ValueError, match="updated"):
        store.update("32TQM", updated="2000-01-01T00:00:00Z")
    with pytest.raises(ValueError, match="unknown state 'finished'"):
        store.update("32TQM", state="finished")
    with pytest.raises(ValueError, match="unknown state 'waiting'"):
        store.update("32TQM", expect=["planned", "waiting"], state="submitted")
    with pytest.raises(ValueError, match="unknown state"):
        store.tiles(states=["planned", "bogus"])
    with pytest.raises(StoreError, match="no tile 'XXXXX'"):
        store.update("XXXXX", state="done")
    assert store.tiles() == before
    assert len(store.events()) == len(TILES)


# ------------------------------------------------------------------------------------------------- transactions
def test_transaction_rolls_back_on_exception(place, store):
    before, events = store.tiles(), store.events()
    with pytest.raises(RuntimeError, match="sbatch failed"), store.transaction():
        assert store.update("32TQM", expect="planned", state="submitted", submit_token="t")
        assert store.update("33UUP", expect="planned", state="submitted", submit_token="t")
        raise RuntimeError("sbatch failed")
    assert store.tiles() == before
    assert store.events() == events
    with open_store(*place) as other:
        assert other.tiles() == before
    # the store works on after it
    assert store.update("32TQM", expect="planned", state="submitted")


def test_nested_transaction(place, store):
    with open_store(*place) as other:
        with store.transaction():
            store.update("32TQM", state="submitted", job_id="1")
            with store.transaction():
                store.update("33UUP", state="submitted", job_id="1")
            with pytest.raises(KeyError), store.transaction():   # an inner block that fails: only its writes go
                store.update("32ULU", state="failed", error="boom")
                raise KeyError("inner")
            assert store.tiles(names=["32ULU"])[0].state == "planned"
            # the inner blocks did not commit: another connection sees none of it yet
            assert [row.state for row in other.tiles()] == ["empty", "planned", "planned", "planned"]
        assert [(row.tile, row.state) for row in other.tiles()] == [
            ("31UFT", "empty"), ("32TQM", "submitted"), ("32ULU", "planned"), ("33UUP", "submitted")]
        assert [event["tile"] for event in other.events() if event["old"] is not None] == ["32TQM", "33UUP"]
    # an exception through both levels rolls back both
    with pytest.raises(ValueError, match="outer"), store.transaction():
        store.update("32ULU", state="running")
        with store.transaction():
            store.update("31UFT", state="planned")
        raise ValueError("outer")
    assert [row.state for row in store.tiles()] == ["empty", "submitted", "planned", "submitted"]


# ------------------------------------------------------------------------------------------------ counts, events
def test_counts(store):
    assert store.counts() == {"planned": 3, "submitted": 0, "running": 0, "done": 0, "failed": 0, "cancelled": 0,
                              "empty": 1}
    assert list(store.counts()) == list(STATES)
    store.update("32TQM", state="running")
    store.update("33UUP", state="done")
    assert store.counts() == {**dict.fromkeys(STATES, 0), "planned": 1, "running": 1, "done": 1, "empty": 1}


def test_events(store):
    created = store.events()
    assert [(event["tile"], event["old"], event["new"]) for event in created] == [
        (name, None, "empty" if count == 0 else "planned") for name, count in TILES]
    assert set(created[0]) == {"time", "tile", "old", "new", "attempt", "job_id", "error"}
    store.update("32TQM", expect="planned", state="submitted", attempts=1, submit_token="t")
    store.update("32TQM", job_id="99")   # no change of state: no event
    store.update("32TQM", state="running")
    assert not store.update("32TQM", expect="planned", state="submitted")   # refused: no event
    store.update("32TQM", state="failed", error="Killed: out of memory")
    store.update("33UUP", state="cancelled")
    history = store.events("32TQM")
    assert [{key: event[key] for key in ("old", "new", "attempt", "job_id", "error")} for event in history] == [
        {"old": None, "new": "planned", "attempt": 0, "job_id": None, "error": None},
        {"old": "planned", "new": "submitted", "attempt": 1, "job_id": None, "error": None},
        {"old": "submitted", "new": "running", "attempt": 1, "job_id": "99", "error": None},
        {"old": "running", "new": "failed", "attempt": 1, "job_id": "99", "error": "Killed: out of memory"}]
    times = [event["time"] for event in store.events()]
    assert times == sorted(times) and all(time.endswith("Z") for time in times)
    assert [event["tile"] for event in store.events()][len(TILES):] == ["32TQM"] * 3 + ["33UUP"]
    assert store.events("nope") == []


# ------------------------------------------------------------------------------------------ existing, several
def test_campaign_already_exists(place, store):
    before = store.tiles()
    with pytest.raises(StoreError, match="a campaign already exists"):
        store.create(SETTINGS, [("NEW", 1)])
    with open_store(*place) as again, pytest.raises(StoreError, match="a campaign already exists"):
        again.create({**SETTINGS, "grid": "other"}, TILES)
    assert store.tiles() == before
    assert store.campaign() == SETTINGS


def test_campaign_directory_holds_one_campaign(tmp_path):
    with open_store(str(tmp_path)) as store:
        store.create(SETTINGS, TILES)
    with open_store(str(tmp_path)) as store, pytest.raises(StoreError, match=r"already exists in it \('c1'\)"):
        store.create({"id": "c2"}, TILES)


def test_several_campaigns_share_a_database(place):
    url = _shared_url(place)
    with open_store(place[0], url) as first:
        first.create(SETTINGS, TILES)
    with open_store(place[0], url) as second:
        second.create({"id": "c2", "grid": "other"}, [("X", 1)])
        second.update("X", state="done")
    with open_store(place[0], url) as store, pytest.raises(StoreError, match="several campaigns"):
        store.tiles()
    with open_store(place[0], url, campaign="c1") as first, open_store(place[0], url, campaign="c2") as second:
        assert first.campaign() == SETTINGS and second.campaign() == {"id": "c2", "grid": "other"}
        assert [row.tile for row in first.tiles()] == sorted(name for name, _ in TILES)
        assert second.tiles() == [TileRow("X", "done", items=1, updated=second.tiles()[0].updated)]
        assert second.counts()["done"] == 1 and first.counts()["done"] == 0
        assert len(first.events()) == len(TILES) and len(second.events()) == 2
        with pytest.raises(StoreError, match="no tile 'X'"):
            first.update("X", state="failed")


# --------------------------------------------------------------------------------------------------- bad places
@pytest.mark.parametrize("url", ["mysql://admin:hunter2@db.example.org/campaigns", "sqlite:relative.db",
                                 "postgresq://admin:hunter2@127.0.0.1:5432/db?password=hunter2",
                                 "host=db.example.org user=admin password=hunter2 dbname=campaigns"])
def test_bad_url(tmp_path, url):
    with pytest.raises(StoreError) as raised:
        open_store(str(tmp_path), url)
    message = str(raised.value)
    assert message.startswith("campaign database ") and "not a database URL" in message
    assert "hunter2" not in message and "\n" not in message
    assert isinstance(raised.value, InputError) and raised.value.exit_code == 2
    if "admin:" in url:
        assert "admin:***@" in message


def test_unreachable_postgresql(tmp_path):
    require(_psycopg_missing() is None, "psycopg 3", INSTALL)
    port = free_port()   # nothing listens there
    started = time.monotonic()
    with pytest.raises(StoreError) as raised:
        open_store(str(tmp_path), f"postgresql://admin:hunter2@127.0.0.1:{port}/campaigns")
    message = str(raised.value)
    assert time.monotonic() - started < 5
    assert message.startswith(f"campaign database postgresql://admin:***@127.0.0.1:{port}/campaigns: ")
    assert "refused" in message.lower()
    assert "hunter2" not in message and "\n" not in message


# ---------------------------------------------------------------------------------------------------- atomicity
_KILLED = """
import sys, time
from mpi_s2.campaign.store import open_store
with open_store(sys.argv[1], sys.argv[2] or None) as store:
    assert store.update("32TQM", expect="planned", state="submitted", job_id="1", attempts=1)   # committed
    with store.transaction():
        store.update("33UUP", state="submitted", job_id="2", attempts=1)
        store.update("32ULU", state="failed", error="boom")
        store.update("32TQM", state="running", nodes="n01")
        store.update("31UFT", state="planned")
        print("inside", flush=True)
        time.sleep(120)
"""


def test_killed_in_a_transaction_changes_nothing(place, store):
    """A process killed (SIGKILL) in the middle of a transaction leaves what was committed before it, and nothing
    of the transaction; the next writer is not blocked by it."""
    committed = {"32TQM": ("submitted", "1", None)}
    before = {row.tile: (row.state, row.job_id, row.nodes) for row in store.tiles()}
    store.close()
    child = subprocess.Popen([sys.executable, "-c", _KILLED, place[0], place[1] or ""], cwd=place[0],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        line = child.stdout.readline() if child.stdout else ""
        assert line == "inside\n", child.stderr.read() if child.stderr else ""
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.communicate(timeout=30)
    assert child.returncode == -signal.SIGKILL
    with open_store(*place) as after:
        assert {row.tile: (row.state, row.job_id, row.nodes) for row in after.tiles()} == {**before, **committed}
        assert [(event["tile"], event["new"]) for event in after.events()][len(TILES):] == [("32TQM", "submitted")]
        started = time.monotonic()
        assert after.update("32TQM", expect="submitted", state="running")   # the lock went with the process
        assert after.update("33UUP", expect="planned", state="submitted")
        assert time.monotonic() - started < 10
        assert after.counts() == {**dict.fromkeys(STATES, 0), "planned": 1, "submitted": 1, "running": 1,
                                  "empty": 1}
