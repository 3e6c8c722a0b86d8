"""
What every command of ``projects/SFNet`` does around its ``main(argv)``: an expected error (a
missing, refused or damaged file, a wrong config key or value, a checkpoint of another model,
inputs that could not be read) reaches the user as one message naming the problem, with exit
status 1, instead of a long traceback; anything else (a bug) keeps its traceback.

    if __name__ == "__main__":
        sys.exit(run_command(main))

``main`` itself raises, so that tests and other Python code calling it see the exception.
"""
import os
import sys
from typing import Callable, Optional, Sequence

__all__ = ["is_expected_error", "run_command"]

# The standard types the project's checks raise with a message that names the file, key or
# value and says what to do (FileNotFoundError, FileExistsError, NotADirectoryError, ValueError,
# detectron2's KeyError for an unregistered dataset); every exception class defined in sfnet_d2
# counts too (CheckpointMismatchError, CheckpointReadError, SkippedInputsError, ...).
_EXPECTED_TYPES = (OSError, ValueError, KeyError)


def is_expected_error(error: BaseException) -> bool:
    """Whether ``error`` is a user-facing error (see the module docstring)."""
    return (isinstance(error, _EXPECTED_TYPES)
            or any(cls.__module__.startswith("sfnet_d2.") for cls in type(error).__mro__))


def _message(error: BaseException) -> str:
    if isinstance(error, KeyError) and len(error.args) == 1:
        return str(error.args[0])  # str(KeyError) would quote the message
    return str(error) or type(error).__name__


def run_command(main: Callable, argv: Optional[Sequence[str]] = None) -> int:
    """Run ``main(argv)``; returns the exit status: ``main``'s own when it returns an int, 0 when
    it returns anything else, 1 (after printing "<command>: error: <message>" on stderr) when it
    raises an expected error."""
    try:
        result = main(argv)
    except Exception as e:  # noqa: BLE001 (anything unexpected is re-raised below)
        if not is_expected_error(e):
            raise
        sys.stdout.flush()  # the message comes after what the command printed so far
        print(f"{os.path.basename(sys.argv[0]) or 'sfnet_d2'}: error: {_message(e)}",
              file=sys.stderr)
        return 1
    return result if isinstance(result, int) and not isinstance(result, bool) else 0
