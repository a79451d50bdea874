"""--help of the experiment scripts: every flag explained, each default shown once, example
commands kept on their own lines."""
import argparse
import importlib
import re

import pytest

from utils.cli import HelpFormatter, Parser
from utils.experiment import FAMILY, base_parser

SCRIPTS = {"rgb": "main_rgb", "flow": "main_flow", "twostream": "main_twostream", "ms": "main_ms", "ms_op": "main_ms_op"}


@pytest.mark.parametrize("kind", sorted(SCRIPTS))
def test_every_flag_has_help_and_one_default(kind):
    doc = importlib.import_module(SCRIPTS[kind]).__doc__
    parser = base_parser(kind, doc)
    formatter = HelpFormatter("prog")
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        text = formatter._get_help_string(action)
        assert action.help, f"{action.option_strings[0]} has no help text"
        assert text.count("default:") <= 1, f"{action.option_strings[0]}: {text}"
        if action.default not in (None, False, argparse.SUPPRESS):
            assert "default:" in text, f"{action.option_strings[0]} hides its default {action.default}"
    help_text = parser.format_help()
    # the docstring's example commands survive as lines of their own
    examples = [line.strip() for line in doc.splitlines() if line.strip().startswith("python ")]
    assert examples, "the script's docstring shows how to run it"
    lines = [line.strip() for line in help_text.splitlines()]
    for example in examples:
        assert example in lines


def test_paths_formatted_once_and_lists_spaced():
    p = Parser(prog="x")
    p.add_argument("--users", nargs="+", default=["S1", "S3"], help="users")
    p.add_argument("--n", type=int, default=3, help="a count (default: three)")
    p.add_argument("--flag", action="store_true", help="a switch")
    p.add_argument("--opt", default=None, help="optional")
    p.add_argument("--pct", default="50%", help="a share")
    text = re.sub(r"\s+", " ", p.format_help())
    assert "users (default: S1 S3)" in text
    assert "a count (default: three)" in text and "(default: 3)" not in text
    assert "a switch" in text and "a switch (default" not in text
    assert "optional (default" not in text
    assert "a share (default: 50%)" in text


def test_parser_error_is_one_line(capsys):
    p = Parser(prog="x")
    p.add_argument("--n", type=int)
    with pytest.raises(SystemExit) as e:
        p.parse_args(["--n", "many"])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: ") and "see x --help" in err


class _Parsed(Exception):
    pass


def parser_of(module, monkeypatch):
    """The argparse parser a tool's parse_args / main builds (caught before it parses)."""
    def grab(self, *args, **kwargs):
        raise _Parsed(self)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_args", grab)
    monkeypatch.setattr(argparse.ArgumentParser, "parse_known_args", grab)
    mod = importlib.import_module(module)
    with pytest.raises(_Parsed) as caught:
        (getattr(mod, "parse_args", None) or mod.main)([])
    return caught.value.args[0]


TOOLS = ["tools.evaluation", "predict", "replicate", "bench", "datasets.prepare.prepare", "datasets.prepare.synthetic",
         "datasets.prepare.long_video", "datasets.prepare.quality", "tools.verify_original"]


@pytest.mark.parametrize("module", TOOLS)
def test_every_tool_explains_every_flag_and_shows_defaults_once(module, monkeypatch):
    parser = parser_of(module, monkeypatch)
    assert isinstance(parser.formatter_class(prog="x"), HelpFormatter), f"{module}: utils.cli's help layout"
    formatter = parser._get_formatter()
    for action in parser._actions:
        if not action.option_strings or action.help == argparse.SUPPRESS:
            continue
        name = action.option_strings[0]
        text = formatter._get_help_string(action)
        assert action.help, f"{module} {name} has no help text"
        assert text.count("default:") <= 1, f"{module} {name}: {text}"
        if action.nargs != 0 and action.default not in (None, argparse.SUPPRESS):
            assert "default" in text, f"{module} {name} hides its default {action.default!r}"


@pytest.mark.parametrize("module, argv, expected", [
    ("datasets.prepare.synthetic", ["--outDir", "D", "--ifMissing", "--noShort", "--noQuirks"],
     dict(out="D", if_missing=True, short=False, quirks=False)),
    ("datasets.prepare.synthetic", ["--outDir", "D"], dict(out="D", if_missing=False, short=True, quirks=True)),
    ("datasets.prepare.prepare", ["--videos", "V", "--outDir", "D", "--numWorkers", "3"], dict(out="D", workers=3)),
])
def test_flags_reach_their_settings(module, argv, expected, monkeypatch):
    """One name per concept (--outDir, --numWorkers, camelCase), each landing where the tool reads it."""
    parser = parser_of(module, monkeypatch)
    monkeypatch.undo()
    args = parser.parse_args(argv)
    assert {k: getattr(args, k) for k in expected} == expected
