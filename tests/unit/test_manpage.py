"""docs/lxc-notify.8 (the Debian package's man page) names every command and option."""

from __future__ import annotations

import argparse
import re
from collections.abc import Iterator
from pathlib import Path

from lxc_notify_plugin.cli import build_parser

MANPAGE = Path(__file__).resolve().parent.parent.parent / "docs" / "lxc-notify.8"


def _commands(parser: argparse.ArgumentParser, prefix: str = ""
              ) -> Iterator[tuple[str, argparse.ArgumentParser]]:
    """(command words, its parser) for every command at every depth."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                words = f"{prefix} {name}".strip()
                nested = any(isinstance(a, argparse._SubParsersAction) for a in sub._actions)
                if not nested:
                    yield words, sub
                yield from _commands(sub, words)


def _text() -> str:
    # roff: \- is a hyphen, \& a zero-width break, font changes are \fB..\fR.
    text = MANPAGE.read_text()
    text = re.sub(r"\\f[BIRP]", "", text).replace("\\-", "-").replace("\\&", "")
    # Macro lines (.B, .BI ...) lose the macro and their quotes.
    return re.sub(r"^\.[A-Z]+ ?(.*)$", lambda m: m.group(1).replace('"', ""), text,
                  flags=re.MULTILINE)


def test_every_command_and_its_options_are_in_the_man_page() -> None:
    text = _text()
    missing = []
    for words, parser in _commands(build_parser()):
        if not re.search(rf"^{re.escape(words)}\b", text, re.MULTILINE):
            missing.append(words)
        for action in parser._actions:
            for option in action.option_strings:
                if option.startswith("--") and option != "--help" and option not in text:
                    missing.append(f"{words} {option}")
    assert not missing, f"not in {MANPAGE.name}: {sorted(set(missing))}"
