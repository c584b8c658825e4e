"""``python -m nodes``: a compute node (the same as ``chainconsole node``)."""

import sys

from nodes.cli import main

sys.exit(main())
