"""`fastfree profile`: operation counts and profiles. `table1` regenerates the paper's Table 1."""

from __future__ import annotations

from fastfree.commands.common import write_json
from fastfree.errors import FastFreeError


def table1(args) -> dict:
    from fastfree.profiling.table1 import payload, table1 as build, to_markdown

    rows = build()
    print(to_markdown(rows))
    result = payload(rows)
    write_json(args.json, result)
    return result


SUBCOMMANDS = {"table1": table1}


def run(args) -> dict:
    if args.profile_command not in SUBCOMMANDS:
        raise FastFreeError(f"unknown profile sub-command {args.profile_command!r}: use one of {', '.join(SUBCOMMANDS)}")
    return SUBCOMMANDS[args.profile_command](args)
