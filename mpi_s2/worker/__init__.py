"""What a worker does with one work item: stage a unit, compose a window, encode its tiles (no MPI)."""
