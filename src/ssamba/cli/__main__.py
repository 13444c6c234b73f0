"""``python -m ssamba.cli``: the same as the ``ssamba`` command."""

import sys

from ssamba.cli import main

sys.exit(main())
