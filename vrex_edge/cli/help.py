"""Help rendering for the typer CLI: flags show no value, repeatable options show their element type.

typer 0.29 renders a flag as `--quiet <bool>` and a repeatable option as `--opt <list[str]>`;
`HelpGroup` (the app's group class) gives flags an empty metavar and repeatable options their
element's (`--opt <str>`, repeatable as the help says) before any help is drawn. Options with a
metavar of their own keep it. Typer releases without `TyperOption.display_type` keep their own
metavars (seen on the GPU host's image: every command failed there before this check).
"""

from __future__ import annotations

import re
from typing import Any

import typer.core


def tidy_metavars(command: Any, ctx: Any) -> None:
    """Set the metavars of `command`'s options (and of its subcommands', for a group) in place."""
    for param in command.get_params(ctx):  # with --help, which click adds
        if getattr(param, "param_type_name", "") != "option" or param.metavar is not None:
            continue
        if param.is_flag:
            param.metavar = ""
        elif param.multiple and isinstance(param, typer.core.TyperOption) and hasattr(param, "display_type"):
            param.metavar = re.sub(r"^<list\[(.*)\]>$", r"<\1>", param.display_type(ctx))
    for sub in (getattr(command, "commands", None) or {}).values():
        tidy_metavars(sub, ctx)


class HelpGroup(typer.core.TyperGroup):
    """The app's group: tidies its own and its commands' metavars before they are drawn."""

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            tidy_metavars(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        tidy_metavars(self, ctx)
        super().format_help(ctx, formatter)
