"""`hebbir app`: start the Streamlit page (app.py) bound to this machine only, unless told otherwise."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from hebb.errors import UserError
from retrieval.commands.common import positive_int

LOOPBACK = ("127.0.0.1", "localhost", "::1")


def app_path() -> Path:
    """app.py: beside the `retrieval` package, in the repository or in site-packages."""
    import retrieval

    return Path(retrieval.__file__).resolve().parent.parent / "app.py"


def register(sub: argparse._SubParsersAction) -> None:
    from retrieval.appkit import INDEX_DIR_ENV, MAX_UPLOAD_MB, REPORTS_DIR_ENV

    p = sub.add_parser(
        "app", help="start the search page in the browser",
        description="Start the Streamlit page: query an index by image, browse results and evaluation reports. "
                    "It listens on 127.0.0.1 only (this machine) unless --address says otherwise.",
        epilog="example: hebbir app --index-dir index_data --port 8501")
    p.add_argument("--index-dir", type=Path, default=None,
                   help=f"folder holding the indexes (default: ${INDEX_DIR_ENV} or ./index_data)")
    p.add_argument("--reports-dir", type=Path, default=None,
                   help=f"folder holding evaluation reports (default: ${REPORTS_DIR_ENV} or ./reports)")
    p.add_argument("--port", type=positive_int, default=8501, help="port to listen on (default: 8501)")
    p.add_argument("--address", default="127.0.0.1",
                   help="address to listen on (default: 127.0.0.1; 0.0.0.0 exposes the page to the network)")
    p.add_argument("--max-upload-mb", type=positive_int, default=MAX_UPLOAD_MB,
                   help=f"largest upload accepted, in MB (default: {MAX_UPLOAD_MB})")
    p.add_argument("--no-browser", action="store_true", help="do not open a browser window")
    p.set_defaults(func=run)


def streamlit_command(args: argparse.Namespace) -> list[str]:
    """The `streamlit run` command line for `args`."""
    return [
        sys.executable, "-m", "streamlit", "run", str(app_path()),
        "--server.address", args.address,
        "--server.port", str(args.port),
        "--server.maxUploadSize", str(args.max_upload_mb),
        "--server.headless", "true" if args.no_browser else "false",
        "--browser.gatherUsageStats", "false",
        "--client.toolbarMode", "viewer",
        "--client.showErrorDetails", "none",  # no traceback or server path reaches a visitor
        "--server.fileWatcherType", "none",
    ]


def run(args: argparse.Namespace) -> int:
    from retrieval.appkit import INDEX_DIR_ENV, REPORTS_DIR_ENV

    if not app_path().is_file():
        raise UserError(f"the page is missing: {app_path()} (reinstall hebbir)")
    env = dict(os.environ)
    for name, folder in ((INDEX_DIR_ENV, args.index_dir), (REPORTS_DIR_ENV, args.reports_dir)):
        if folder is not None:
            if not folder.is_dir():
                raise UserError(f"{folder}: no such folder")
            env[name] = str(folder.resolve())
    if args.address not in LOOPBACK:
        print(f"hebbir: warning: listening on {args.address}: anyone who can reach this machine can use the "
              "page and upload files", file=sys.stderr)
    command = streamlit_command(args)
    sys.stdout.flush()
    sys.stderr.flush()
    if os.name == "posix":
        # Become the server process: signals (Ctrl-C, a supervisor's SIGTERM) reach Streamlit directly.
        os.execve(command[0], command, env)
    try:
        return subprocess.call(command, env=env)
    except KeyboardInterrupt:
        return 0
