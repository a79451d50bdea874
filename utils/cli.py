"""Command lines that fit one hand: one-line errors and a --help that reads as written.

Imports nothing heavy (no torch), so the data tools start fast."""
import argparse
import sys


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The description and epilog keep their lines (example commands stay one per line), and each
    flag shows its default once: appended unless its help already speaks of the default, and never
    for switches or flags whose default is "not given" (None)."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if (not action.option_strings or action.nargs == 0 or default is None or default == argparse.SUPPRESS
                or "default" in text.lower()):
            return text
        shown = " ".join(map(str, default)) if isinstance(default, (list, tuple)) else str(default)
        return f"{text} (default: {shown.replace('%', '%%')})".lstrip()


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors, `error: <what> (see <prog> --help)`, exit status 2, and
    HelpFormatter unless another is asked for."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")



def show_progress(quiet=False, stream=None):
    """Whether to draw progress bars: on a terminal only, and not with --quiet. Redirected to a
    file, a bar's redraws would fill the log with hundreds of lines."""
    stream = sys.stderr if stream is None else stream
    return not quiet and hasattr(stream, "isatty") and stream.isatty()
