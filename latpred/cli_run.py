"""How the console scripts (``latpred``, ``partition``) turn a command's outcome into an exit code.

0 success; 2 bad input (a :class:`~latpred.errors.LatpredError` that is also a ValueError/KeyError,
or any ValueError/KeyError a command lets through); 1 runtime failure (other LatpredErrors,
RuntimeError); 130 Ctrl-C. A closed output pipe (``| head``) is not an error.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable

from .errors import LatpredError

__all__ = ["run_command"]


def run_command(prog: str, func: Callable[[argparse.Namespace], int], args: argparse.Namespace,
                interrupted: str = "interrupted") -> int:
    """Run ``func(args)`` and map what it raises to the exit codes above, printing ``prog: error: ...``."""
    try:
        return int(func(args))
    except KeyboardInterrupt:
        print(interrupted, file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` & co.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (LatpredError, ValueError, KeyError, RuntimeError) as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2 if isinstance(e, (ValueError, KeyError)) else 1
