"""Entry point of the cloud server process: ``python -m partition._serve`` (see :mod:`partition.runtime`)."""

import sys

from partition.runtime import _serve_main

if __name__ == "__main__":
    sys.exit(_serve_main())
