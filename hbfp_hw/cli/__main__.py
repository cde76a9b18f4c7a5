"""``python -m hbfp_hw.cli``: the same as the ``hbfp-hw`` command."""

import sys

from hbfp_hw.cli import main

sys.exit(main())
