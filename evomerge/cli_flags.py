"""The command class of every ``evomerge`` command: usage mistakes read like every other user
error, one ``error:`` line and exit code 2.

Boolean options are plain flags (``--allow-pickle``, never ``--allow-pickle true``). Click's own
answer to a value after a flag is "Got unexpected extra argument(s) (true)", which does not say
what went wrong, so that case gets its own line; a missing required option, a bad value or an
unknown option keep click's message, on one line that points at the command's --help.
"""

from __future__ import annotations

import typer
from typer._click.exceptions import NoArgsIsHelpError, UsageError
from typer.core import TyperCommand

BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def flag_misuse(args: list[str], flags: set[str]) -> str | None:
    """The first flag in ``args`` written with a value (``--f=x`` or ``--f true``), or None."""
    for i, arg in enumerate(args):
        if arg == "--":
            return None
        name, eq, _ = arg.partition("=")
        following = args[i + 1].lower() if i + 1 < len(args) else ""
        if name in flags and (eq or following in BOOL_WORDS):
            return name
    return None


class FlagCommand(TyperCommand):
    def parse_args(self, ctx: typer.Context, args: list[str]) -> list[str]:
        flags = {o for p in self.params if getattr(p, "is_flag", False) for o in p.opts}
        name = flag_misuse(list(args), flags - {"--help"})
        if name is not None:
            _fail(
                ctx,
                f"{name} is a flag and takes no value: write {name} alone to turn it on, "
                "leave it out to keep it off",
            )
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:
            raise
        except UsageError as err:
            _fail(ctx, f"{err.format_message().rstrip('.')}; see {ctx.command_path} --help")
            raise  # not reached: _fail exits


def _fail(ctx: typer.Context, message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    ctx.exit(2)
