"""Planning (pure logic, no MPI): mosaic placement, staging of misaligned sources, schedules and the compose plan."""
