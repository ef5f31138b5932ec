"""The MPI program: rank roles, transport of pixel blocks, work distribution and the pipeline."""
