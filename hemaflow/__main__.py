"""``python -m hemaflow COMMAND``: the same command line as the ``hemaflow`` script."""

import sys

from hemaflow.pipeline.cli import main

if __name__ == "__main__":
    sys.exit(main())
