"""`python -m gateway` is the same program as the `gateway` console script."""

import sys

from gateway.cli import main

sys.exit(main())
