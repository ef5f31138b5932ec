import sys

from mpi_s2.cli import main

sys.exit(main())
