"""``python -m raysearch_adapters``: the ``raysearch-adapters`` command."""

import sys

from raysearch_adapters.commands.main import main

sys.exit(main())
