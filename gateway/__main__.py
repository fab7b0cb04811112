"""``python -m gateway`` is the ``dicomweb-gateway`` command."""

import sys

from gateway.cli import main

sys.exit(main())
