"""User-facing errors: one line, a non-zero exit, no traceback.

Every error a user can cause by a wrong argument, a wrong folder or a wrong file is raised as
one of the exception types collected in `user_error_types()`; `run_cli` turns them into
`error: <message>` on stderr and exit status 2."""
import sys


class UserError(Exception):
    """A problem with the user's arguments or files; the message says what to do."""


class NonFiniteLossError(Exception):
    """Training diverged; the last good checkpoint is kept."""


def user_error_types():
    types = [UserError]
    try:
        from datasets import DatasetError  # lazy: tools without torch (datasets.prepare) use this module
        types.append(DatasetError)
    except ImportError:
        pass
    try:
        from models import CheckpointError, PretrainedWeightsError  # lazy: as above
        types += [CheckpointError, PretrainedWeightsError]
    except ImportError:
        pass
    return tuple(types)


def run_cli(main, argv=None):
    """Run `main(argv)`; map user errors to one line and exit 2, Ctrl-C to exit 130."""
    try:
        code = main(argv)
    except user_error_types() as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except NonFiniteLossError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(3)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    sys.exit(code or 0)
