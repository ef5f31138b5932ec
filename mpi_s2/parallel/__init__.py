"""MPI only: rank roles, transport, work feeds, the output stage (both backends and convert), the compose job,
collective rounds, termination and runtime."""
