"""Where a run's files live while it runs: the output's temporary name and its scratch files beside it.

A run writes its output under ``.NAME.partial`` in the output's directory (so the final rename is atomic) and
its scratch files as ``.NAME.partial.KIND``; nothing is ever written under the requested name until complete.
"""

from __future__ import annotations

import os

from mpi_s2.errors import OutputError, PathError


def partial_path(output: str) -> str:
    """Where the output is written until it is complete (same directory, so the rename is atomic)."""
    head, tail = os.path.split(output)
    return os.path.join(head, f".{tail}.partial")


def check_output_path(output: str, *, overwrite: bool, inputs: tuple[str, ...] = ()) -> None:
    """Raise :class:`OutputError` when ``output`` cannot or must not be written."""
    directory = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(directory):
        raise OutputError(f"{output}: output directory {directory} does not exist")
    if not os.access(directory, os.W_OK):
        raise OutputError(f"{output}: output directory {directory} is not writable")
    if os.path.isdir(output):
        raise OutputError(f"{output}: is a directory")
    real_out = os.path.realpath(output)
    for path in inputs:
        if os.path.realpath(path) == real_out:
            raise OutputError(f"{output}: output would overwrite the input {path}")
    if os.path.exists(output) and not overwrite:
        raise OutputError(f"{output}: already exists (use --overwrite to replace it)")


def check_side_file(path: str, option: str) -> None:
    """Raise :class:`PathError` when a file the run writes besides its output (``--report``,
    ``--progress-file``) cannot be written: its directory must exist and be writable."""
    directory = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(directory):
        raise PathError(f"{path}: {option}: directory {directory} does not exist", path)
    if not os.access(directory, os.W_OK):
        raise PathError(f"{path}: {option}: directory {directory} is not writable", path)
    if os.path.isdir(path):
        raise PathError(f"{path}: {option}: is a directory", path)


#: Scratch files beside the temporary output: a COG's tiles and coarse levels, the journal of a resumable run
#: (see mpi_s2.output.tiff_assembly).
SPOOL_KINDS = ("tiles", "levels", "journal", "kept", "stretch")  # kept: the note that a failed run was kept was
# printed; stretch: the limits of a --stretch percentile run (mpi_s2.parallel.stretch_pass)


def spool_path(output: str, kind: str) -> str:
    """A scratch file of the run writing ``output``, beside its temporary file: ``.NAME.partial.KIND``."""
    assert kind in SPOOL_KINDS
    return f"{partial_path(output)}.{kind}"


def partial_run_exists(output: str) -> bool:
    """Whether a journal of a partial run of ``output`` is there (``--resume`` can continue it)."""
    return os.path.exists(spool_path(output, "journal"))


def remove_partial(output: str, keep: tuple[str, ...] = ()) -> None:
    """Best-effort removal of the temporary file of ``output`` and its scratch files (used when a run fails),
    but for the spool kinds in ``keep``."""
    for path in (partial_path(output), *(spool_path(output, kind) for kind in SPOOL_KINDS if kind not in keep)):
        try:
            os.unlink(path)
        except OSError:
            pass


