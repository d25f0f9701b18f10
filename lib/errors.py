"""User-facing errors: bad input is reported as one clear line and a non-zero exit, never a traceback."""
import functools
import sys


class UserError(Exception):
    """A problem with what the user asked for (missing file, bad value, wrong layout, ...)."""


def check(condition, message):
    """Raise UserError(message) unless condition holds."""
    if not condition:
        raise UserError(message)


def cli_main(fn):
    """Decorator for a script's main(): UserError -> 'error: ...' on stderr and exit status 2."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except UserError as e:
            print(f"error: {e}", file=sys.stderr, flush=True)
            sys.exit(2)
        except KeyboardInterrupt:
            print("interrupted: re-run the same command to resume", file=sys.stderr, flush=True)
            sys.exit(130)

    return wrapper
