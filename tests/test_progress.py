import io
import json
import logging
import re
import sys

import pytest

from mpi_s2.parallel.progress import LogFormatter, Progress, format_duration, timestamp

from conftest import band_set_args, compose_args, run_mpi_s2

LINE = re.compile(r"^mpi_s2: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (\w+) (\d+)/(\d+) \(\d+\.\d%\)( [\d.]+/(s|min))?"
                  r"( ETA \d+ (s|min \d\d s|h \d\d min))?$")


class FakeClock:
    """A monotonic clock that only moves when told to."""

    def __init__(self, now: float = 1000.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def progress(phases, clock, **kwargs) -> Progress:
    return Progress(phases, clock=clock, wallclock=lambda: 1_796_186_400.0 + clock.now, **kwargs)


def parse(stream: io.StringIO) -> list[re.Match]:
    text = stream.getvalue()
    assert "\r" not in text
    matches = [LINE.match(line) for line in text.splitlines()]
    assert all(matches), text
    return matches  # type: ignore[return-value]


def read_json(path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_timestamps_are_iso_8601_utc_to_the_second():
    assert timestamp(1_796_186_400.7) == "2026-12-02T04:40:00Z"
    record = logging.LogRecord("mpi_s2", logging.INFO, __file__, 1, "3 windows left", None, None)
    record.created = 1_796_186_400.0
    assert LogFormatter().format(record) == "mpi_s2: 2026-12-02T04:40:00Z 3 windows left"


def test_durations():
    assert [format_duration(s) for s in (0.2, 34, 725, 11_040)] == ["0 s", "34 s", "12 min 05 s", "3 h 04 min"]


def test_piped_lines_one_per_tenth_with_rate_and_eta():
    clock, stream = FakeClock(), io.StringIO()
    with progress(1000, clock, stream=stream) as p:
        clock.now += 5  # past the delay
        for done in range(1, 1001):
            clock.now += 0.01
            p.update(done)
    lines = parse(stream)
    assert [(m[1], m[2]) for m in lines] == [("windows", "1")] + [("windows", str(100 * k)) for k in range(1, 11)]
    assert all(m[3] == "1000" for m in lines)
    middle = stream.getvalue().splitlines()[5]
    assert middle.endswith("(50.0%) 100.0/s ETA 5 s"), middle
    assert lines[-1][0].endswith("(100.0%) 100.0/s")  # no ETA once done
    assert "ETA" not in lines[0][0]  # no rate before time has passed


def test_slow_progress_gets_a_heartbeat_line_a_minute():
    clock, stream = FakeClock(), io.StringIO()
    p = progress(1000, clock, stream=stream)
    for done in range(1, 31):
        clock.now += 20  # 10 minutes for 3 %
        p.update(done)
    p.close()
    lines = parse(stream)
    assert [int(m[2]) for m in lines] == list(range(1, 31, 3))  # one a minute, not one an update
    assert stream.getvalue().splitlines()[-1].endswith("windows 28/1000 (2.8%) 3.0/min ETA 5 h 24 min")


def test_short_disabled_and_empty_runs_print_nothing():
    clock, stream = FakeClock(), io.StringIO()
    short = progress(50, clock, stream=stream)
    for done in range(1, 51):
        clock.now += 0.03  # 1.5 s in all, under the 2 s delay
        short.update(done)
    short.close()
    disabled = progress(50, clock, stream=stream, enabled=False, delay_s=0.0)
    for done in range(1, 51):
        clock.now += 1
        disabled.update(done)
    disabled.close()
    terminal = Terminal()
    empty = progress({"staging": 0, "windows": 0}, clock, stream=terminal, delay_s=0.0)
    empty.update(0, "staging")
    empty.close()
    assert stream.getvalue() == "" and terminal.getvalue() == ""
    with pytest.raises(ValueError, match="unknown phase"):
        empty.update(1, "stagin")


def test_counts_never_go_back_nor_past_the_total():
    clock, stream = FakeClock(), io.StringIO()
    p = progress(10, clock, stream=stream, delay_s=0.0)
    for done in (3, 2, 6, 4, 12):
        clock.now += 1
        p.update(done)
    p.close()
    assert [int(m[2]) for m in parse(stream)] == [3, 6, 10]


def test_progress_file_is_json_lines_throttled_to_a_second(tmp_path):
    clock, path = FakeClock(), tmp_path / "progress.jsonl"
    path.write_text('{"earlier": "run"}\n')
    p = progress({"staging": 40, "windows": 200}, clock, stream=io.StringIO(), enabled=False,
                 progress_file=str(path))
    for done in range(1, 201):
        clock.now += 0.1
        if done <= 40:
            p.update(done, "staging")
        p.update(done)
    p.close()
    p.close()
    first, *records = read_json(path)
    assert first == {"earlier": "run"}  # appended
    assert all(set(r) == {"time", "phase", "done", "total", "eta_s"} for r in records)
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", r["time"]) for r in records)
    for phase, total in (("staging", 40), ("windows", 200)):
        mine = [r for r in records if r["phase"] == phase]
        done = [r["done"] for r in mine]
        assert done[0] == 0 and mine[0]["eta_s"] is None
        assert done == sorted(done) and done[-1] == total and done.count(total) == 1
        assert all(r["total"] == total for r in mine)
        assert mine[-1]["eta_s"] == 0.0
        assert len(mine) <= 2 + total * 0.1 / 1.0  # start, end, at most one a second
    assert len([r for r in records if r["phase"] == "windows"]) >= 19
    windows = [r for r in records if r["phase"] == "windows" and 0 < r["done"] < 200]
    assert all(r["eta_s"] == pytest.approx((200 - r["done"]) / 10, abs=0.2) for r in windows)


def test_progress_file_gets_the_last_count_of_a_run_that_stops_short(tmp_path):
    clock, path = FakeClock(), tmp_path / "progress.jsonl"
    with pytest.raises(RuntimeError), progress(100, clock, stream=io.StringIO(), progress_file=str(path)) as p:
        for done in range(1, 38):
            clock.now += 0.01
            p.update(done)
        raise RuntimeError("a worker failed")
    assert [r["done"] for r in read_json(path)] == [0, 37]


def test_staging_and_windows_are_reported_as_two_phases():
    clock, stream = FakeClock(), io.StringIO()
    with progress({"staging": 20, "windows": 100}, clock, stream=stream) as p:
        clock.now += 3
        for done in range(1, 101):
            clock.now += 0.5
            if done <= 20:
                p.update(done, "staging")
            p.update(done)
    lines = parse(stream)
    staging = [int(m[2]) for m in lines if m[1] == "staging"]
    windows = [int(m[2]) for m in lines if m[1] == "windows"]
    assert staging == [1] + [2 * k for k in range(1, 11)]
    assert windows == [1] + [10 * k for k in range(1, 11)]
    assert all(m[3] == ("20" if m[1] == "staging" else "100") for m in lines)


def test_a_terminal_gets_tqdm_bars():
    clock, terminal = FakeClock(), Terminal()
    with progress({"staging": 20, "windows": 1000}, clock, stream=terminal) as p:
        clock.now += 3
        for done in range(1, 1001):
            if done <= 20:
                p.update(done, "staging")
            p.update(done)
    text = terminal.getvalue()
    assert "\r" in text  # drawn in place
    assert "mpi_s2:" not in text  # not the log lines
    assert re.search(r"windows: 100%\|.*\| 1000/1000 \[", text), text
    assert re.search(r"staging: 100%\|.*\| 20/20 \[", text), text
    assert re.search(r"\d+/1000 \[\d\d:\d\d<[\d:?]+, +[\d.?]+ ?k?window/s\]", text), text  # elapsed<ETA, rate
    assert re.search(r"unit/s\]", text), text


def test_progress_file_can_be_followed_while_the_run_goes_on(tmp_path):
    clock, path = FakeClock(), tmp_path / "progress.jsonl"
    p = progress({"staging": 5, "windows": 10}, clock, stream=io.StringIO(), progress_file=str(path))
    assert [(r["phase"], r["done"]) for r in read_json(path)] == [("staging", 0), ("windows", 0)]
    clock.now += 1.5
    p.update(2, "staging")
    p.update(5, "staging")  # complete: written at once
    p.update(3)  # over a second since its last line
    assert [(r["phase"], r["done"]) for r in read_json(path)][2:] == [("staging", 2), ("staging", 5), ("windows", 3)]
    clock.now += 0.5
    p.update(4)  # half a second: skipped
    p.update(10)  # complete: written at once
    assert [(r["phase"], r["done"]) for r in read_json(path)][5:] == [("windows", 10)]
    p.close()
    assert len(read_json(path)) == 6


def test_counts_give_each_phase_done_and_total():
    clock = FakeClock()
    p = progress({"staging": 0, "composing": 4, "windows": 4}, clock, stream=io.StringIO())
    p.update(3, "composing")
    p.close()
    p.update(4, "composing")  # after close: ignored
    assert p.counts() == {"staging": {"done": 0, "total": 0}, "composing": {"done": 3, "total": 4},
                          "windows": {"done": 0, "total": 4}}


# -- end to end: mpirun -n N python -m mpi_s2 compose, stderr piped, as in a Slurm log --------------------------

TIMESTAMPED = re.compile(r"^mpi_s2: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ \S")
SHOWN = {"MPI_S2_PROGRESS_DELAY_S": "0"}  # progress from the start: a test run is shorter than the 2 s delay


def shown_run(args: list[str], ranks: int, **kwargs):
    """``run_mpi_s2`` without ``-q``, progress shown from the start."""
    return run_mpi_s2([a for a in args if a != "-q"], ranks=ranks, env=SHOWN, **kwargs)


def check_progress_file(path, totals: dict[str, int]) -> list[dict]:
    """JSON lines, one phase per total given, counts monotonic per phase, the last one complete."""
    records = read_json(path)
    assert all(set(r) == {"time", "phase", "done", "total", "eta_s"} for r in records), records
    assert {r["phase"] for r in records} == set(totals), records
    for phase, total in totals.items():
        mine = [r for r in records if r["phase"] == phase]
        done = [r["done"] for r in mine]
        assert done[0] == 0 and done == sorted(done) and done[-1] == total, (phase, mine)
        assert all(r["total"] == total for r in mine)
    return records


@pytest.mark.parametrize("backend,ranks", [("writer", 3), ("hdf5", 3), ("writer", 1)])
def test_piped_progress_and_progress_file_of_a_staged_mosaic(misaligned, tmp_path, backend, ranks):
    out, report, progress_file = tmp_path / "rgb.tif", tmp_path / "run.json", tmp_path / "progress.jsonl"
    args = ["compose", *band_set_args(misaligned), "-o", str(out), "--window", "256", "--backend", backend,
            "--report", str(report), "--progress-file", str(progress_file)]
    result = shown_run(args, ranks)
    assert result.returncode == 0, result.stderr
    run = json.loads(report.read_text())
    windows, units = run["windows"], run["stage_units"]
    assert windows == 30 and units > 0 and run["windows_computed"] == windows
    totals = {"staging": units, "windows": windows} | ({"composing": windows} if backend == "hdf5" else {})
    check_progress_file(progress_file, totals)
    assert run["progress"] == {phase: {"done": total, "total": total} for phase, total in totals.items()}

    err = result.stderr
    assert "\r" not in err
    lines = err.splitlines()
    assert lines and all(TIMESTAMPED.match(line) for line in lines), err  # no error here: every line is timed
    shown = [m for m in (LINE.match(line) for line in lines) if m]
    assert shown, err
    for phase, total in totals.items():
        mine = [(int(m[2]), int(m[3])) for m in shown if m[1] == phase]
        assert 1 <= len(mine) <= 11, (phase, err)  # one per 10 % step, the first at once
        assert all(t == total for _, t in mine) and mine[-1][0] == total, (phase, err)
        assert [d for d, _ in mine] == sorted(d for d, _ in mine)
    assert re.search(r"Z wrote .*rgb\.tif \(1400 x 1200, 30 windows", lines[-1]), err


def test_quiet_run_shows_nothing_but_still_writes_the_progress_file(scene, tmp_path):
    out, progress_file = tmp_path / "rgb.tif", tmp_path / "progress.jsonl"
    result = run_mpi_s2(compose_args(scene, out, "--window", "512", "--progress-file", str(progress_file)),
                        ranks=2, env=SHOWN)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    check_progress_file(progress_file, {"windows": 9})


def test_log_lines_do_not_break_the_bars_on_a_terminal(monkeypatch):
    terminal = Terminal()
    monkeypatch.setattr(sys, "stderr", terminal)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    root = logging.getLogger()
    monkeypatch.setattr(root, "handlers", [handler])
    clock = FakeClock()
    with progress({"staging": 10, "windows": 100}, clock, stream=terminal, delay_s=0.0) as p:
        for done in range(1, 101):
            clock.now += 0.1
            p.update(min(done, 10), "staging")
            p.update(done)
            if done == 50:
                logging.getLogger("mpi_s2").warning("a warning mid-run")
        assert root.handlers != [handler]  # through tqdm.write while the bars are shown
    assert root.handlers == [handler]
    text = terminal.getvalue()
    # a line of its own once the bars are cleared (carriage return, cursor up), not after a bar's text
    assert re.search(r"(\r|\n|\x1b\[A)mpi_s2: \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ a warning mid-run\n", text), text
    assert re.search(r"windows: 100%\|.*\| 100/100 \[", text)
