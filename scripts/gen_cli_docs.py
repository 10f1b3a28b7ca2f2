"""Write docs/cli.md from the --help of every latpred and partition command (tests/test_docs.py checks it is current).

    python scripts/gen_cli_docs.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from latpred.cli import build_parser as latpred_parser  # noqa: E402
from partition.cli import build_parser as partition_parser  # noqa: E402


def _walk(parser: argparse.ArgumentParser, prefix: str) -> list[tuple[str, str]]:
    out = [(prefix, parser.format_help())]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                out.extend(_walk(sub, f"{prefix} {name}"))
    return out


def render() -> str:
    lines = ["# Command-line reference", "",
             "Generated from the commands' `--help` by `python scripts/gen_cli_docs.py`. Exit codes everywhere: "
             "0 ok, 1 runtime failure, 2 bad input, 130 interrupted. Every command takes `--json` for scripts.", ""]
    for prog, parser in (("latpred", latpred_parser()), ("partition", partition_parser())):
        for name, text in _walk(parser, prog):
            lines += [f"## `{name}`", "", "```text", text.rstrip(), "```", ""]
    return "\n".join(lines)


if __name__ == "__main__":
    import os

    os.environ.setdefault("COLUMNS", "100")
    (ROOT / "docs" / "cli.md").write_text(render(), encoding="utf-8")
    print(f"wrote {ROOT / 'docs' / 'cli.md'}")
