"""mpi_s2: MPI-parallel Sentinel-2 true-colour composites."""

__version__ = "0.1.0"
