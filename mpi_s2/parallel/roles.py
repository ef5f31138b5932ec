"""Named rank roles: who plans, who computes, who writes.

Rank 0 is the planner; once it has scattered the windows it becomes the writer. All other ranks are workers.
A one-rank job runs every role in the same process, through the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

PLANNER_RANK = 0
WRITER_RANK = 0


@dataclass(frozen=True, slots=True)
class Roles:
    rank: int
    size: int

    @property
    def worker_ranks(self) -> tuple[int, ...]:
        """Ranks that read and transform windows: all but the writer, or rank 0 alone in a 1-rank job."""
        if self.size == 1:
            return (0,)
        return tuple(r for r in range(self.size) if r != WRITER_RANK)

    @property
    def is_planner(self) -> bool:
        return self.rank == PLANNER_RANK

    @property
    def is_writer(self) -> bool:
        return self.rank == WRITER_RANK

    @property
    def is_worker(self) -> bool:
        return self.rank in self.worker_ranks

    @property
    def serial(self) -> bool:
        """True when one process holds every role (no pixel ever crosses MPI)."""
        return self.size == 1

    def describe(self) -> str:
        names = [n for n, on in (("planner", self.is_planner), ("writer", self.is_writer),
                                 ("worker", self.is_worker)) if on]
        return "+".join(names)
