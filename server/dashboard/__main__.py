"""``python -m server.dashboard [--host] [--port] [--db] [--token] [--launch FILE]``."""

import sys

from server.dashboard.serve import main

sys.exit(main())
