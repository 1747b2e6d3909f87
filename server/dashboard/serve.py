"""Starting the dashboard: ``serve()`` (what ``edgefed dashboard`` calls) and its flags."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

import uvicorn
from pydantic import ValidationError

from common.config import ConfigError
from common.validate import load_config
from server.dashboard.app import create_app
from server.dashboard.settings import Settings


def serve(host: str | None = None, port: int | None = None, db_url: str | None = None,
          token: str | None = None, launch: Sequence[str | Path] = (),
          max_concurrent_runs: int | None = None, data_dir: str | Path | None = None,
          access_log: bool = False) -> None:
    """Run the dashboard until interrupted; ``launch``: experiment files to start at once.

    Unset arguments fall back to ``EDGEFED_DASHBOARD_*`` variables, then to the defaults
    (127.0.0.1:8080, SQLite in runs/dashboard). Raises ``pydantic.ValidationError`` for bad
    settings (a non-loopback host without a token) and ``ConfigError`` for a bad launch file,
    before anything starts.
    """
    given = {"host": host, "port": port, "db_url": db_url, "token": token,
             "max_concurrent_runs": max_concurrent_runs, "data_dir": data_dir}
    settings = Settings(**{k: v for k, v in given.items() if v is not None})
    app = create_app(settings, launches=[load_config(path) for path in launch],
                     own_process=True)
    uvicorn.run(app, host=settings.host, port=settings.port, timeout_graceful_shutdown=5,
                timeout_keep_alive=30, log_level="info", access_log=access_log)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m server.dashboard", description=__doc__)
    parser.add_argument("--host", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--port", type=int, help="port (default 8080)")
    parser.add_argument("--db", dest="db_url", help="SQLAlchemy URL (default: SQLite file)")
    parser.add_argument("--token", help="bearer token for mutating endpoints")
    parser.add_argument("--data-dir", help="database and run folders (default runs/dashboard)")
    parser.add_argument("--max-runs", dest="max_concurrent_runs", type=int,
                        help="runs executed at once (default 1; 0 pauses the queue)")
    parser.add_argument("--access-log", action="store_true", help="log every request")
    parser.add_argument("--launch", action="append", default=[], metavar="FILE",
                        help="experiment YAML/JSON to create and launch at startup")
    args = parser.parse_args(argv)
    try:
        serve(**vars(args))
    except ConfigError as error:
        print(f"error: invalid config {error.source}:", file=sys.stderr)
        for problem in error.problems:
            print(f"  {problem}", file=sys.stderr)
        return 2
    except ValidationError as error:
        for e in error.errors():
            print(f"error: {e['msg'].removeprefix('Value error, ')}", file=sys.stderr)
        return 2
    return 0
