"""``python -m gateway`` is the ``dicomweb-gateway`` command."""

import sys

from gateway.commands.cli import main

if __name__ == "__main__":
    sys.exit(main())
