"""``python -m modelyard`` and the ``modelyard`` console script: run the command, exit quickly.

A command that imported torch leaves about 2,300 modules behind; tearing them down at
interpreter exit takes about a second after a training run (measured back to back: ``modelyard
train`` of the seed recipe ends 0.4–1.3 s sooner). So once the command has returned, the exit
handlers run and the standard streams are flushed as at a normal exit, and the process then ends
without the teardown. Every file modelyard writes is closed (and fsynced) by then. An exception
still ends the process the normal way, with its traceback.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
from typing import NoReturn

from modelyard.cli import main


def run() -> NoReturn:
    """Run the command line in ``sys.argv`` and exit with its status."""
    code = main()
    atexit._run_exitfuncs()  # logging.shutdown, multiprocessing's joins, tqdm's monitor...
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
