import io

from mpi_s2.parallel.progress import Progress


def test_progress_line_when_delay_passes_then_at_each_tenth_when_not_a_tty():
    stream = io.StringIO()
    progress = Progress(20, stream=stream, delay_s=0.0)
    for done in range(1, 21):
        progress.update(done)
    lines = stream.getvalue().splitlines()
    assert lines[0].startswith("mpi_s2: 1/20 windows")
    assert [line.split()[1] for line in lines[1:]] == [f"{2 * k}/20" for k in range(1, 11)]
    assert lines[-1].startswith("mpi_s2: 20/20 windows (100.0%)")


def test_short_runs_and_quiet_runs_print_nothing():
    stream = io.StringIO()
    progress = Progress(5, stream=stream, delay_s=60.0)
    for done in range(1, 6):
        progress.update(done)
    quiet = Progress(5, stream=stream, delay_s=0.0, enabled=False)
    quiet.update(5)
    assert stream.getvalue() == ""
