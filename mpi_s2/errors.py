"""The exceptions mpi_s2 raises.

Every error the user can cause derives from :class:`MpiS2Error` and carries an exit code: bad input is 2,
an internal failure is 1. Subclasses also inherit the matching standard type so callers that catch
``ValueError`` or ``OSError`` keep working.
"""

from __future__ import annotations


class MpiS2Error(Exception):
    """Root of every mpi_s2 error."""

    exit_code = 1


class InputError(MpiS2Error, ValueError):
    """An input file or option is missing, unreadable or inconsistent. The message names the file."""

    exit_code = 2


class UsageError(InputError):
    """The command line does not parse (an unknown option, a bad value): the message names the subcommand and the
    option, and ends with where to find its help."""


class OutputError(MpiS2Error, OSError):
    """The output cannot be written where the user asked (missing directory, existing file...)."""

    exit_code = 2


class PathError(OutputError):
    """A file the run would write besides its output cannot or must not be written there (``path``), found before
    any input is opened: a ``--report`` that names it is not written either."""

    def __init__(self, message: str, path: str):
        super().__init__(message)
        self.path = path

    def __reduce__(self):  # rank 0 broadcasts it: pickled with its path
        return type(self), (str(self), self.path)


class SourceUnavailable(MpiS2Error, OSError):
    """A network source failed for good in the middle of a run (after GDAL's retries): not bad input, so the
    partial run is kept for ``--resume`` once the source answers again. The message names the URL."""

    exit_code = 1


class WindowError(MpiS2Error, ValueError):
    """A window or window plan is invalid (programming error or impossible option)."""

    exit_code = 2


class LaunchError(MpiS2Error, RuntimeError):
    """The MPI job was launched in a way that cannot work (e.g. srun without PMIx)."""

    exit_code = 2


class Stopped(MpiS2Error):
    """A signal ended the run (a time limit, scancel, Ctrl-C): exit code 128 + the signal number."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum
        self.exit_code = 128 + signum


class CollectiveFailure(MpiS2Error):
    """An error every rank learned at once (rank 0 broadcast it): the job ends cleanly, without an abort, and
    rank 0 reports it once. Exits with the code of the error it carries."""

    def __init__(self, error: MpiS2Error):
        super().__init__(str(error))
        self.error = error
        self.exit_code = error.exit_code


class StudyError(MpiS2Error, RuntimeError):
    """A run of a scaling study failed, or its results cannot be read: the message names the command and carries
    its stderr, or names the file (see mpi_s2.scaling)."""

    exit_code = 1
