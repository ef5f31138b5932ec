"""Planning: the output grid, windows, staging of misaligned sources and the schedule (pure logic, no MPI)."""
