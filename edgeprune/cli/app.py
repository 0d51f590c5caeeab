"""The ``edgeprune`` app: the root options, the command groups' registration (each group a
module with a ``COMMANDS`` table), and ``main``, which turns every failure into one line
and an exit code."""

from __future__ import annotations

import os
import re
import signal
import sys
import threading

import typer

from edgeprune.cli import accuracy, budget, devices, model, training
from edgeprune.cli import options as o
from edgeprune.cli.console import err
from edgeprune.core import ranks
from edgeprune.core.errors import EdgepruneError


class _Command(typer.core.TyperCommand):
    """A command whose --help lists --help as the flag it is (no value placeholder)."""

    def get_help_option(self, ctx):
        option = super().get_help_option(ctx)
        if option is not None:
            option.metavar = ""
        return option


class _Group(typer.core.TyperGroup, _Command):
    """The app's group, with the same --help row as its commands."""


app = typer.Typer(
    cls=_Group,
    name="edgeprune",
    help="Deploy token-pruned Vision Transformers: static top-k graphs, export, profile, budget.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
_state = {"debug": False}


@app.callback()
def _root(
    debug: o.DebugOpt = False,
) -> None:
    _state["debug"] = _state["debug"] or debug


# the command groups, in the order --help lists them
GROUPS = (model, devices, budget, accuracy, training)
COMMANDS = {name: command for g in GROUPS for name, command in g.COMMANDS.items()}
for name, command in COMMANDS.items():
    app.command(name, cls=_Command)(command)
# old names, still accepted, not shown: old name -> the command's name now
COMMAND_ALIASES = {"validate-profile": "validate", "profile-info": "table-info"}
for old, new in COMMAND_ALIASES.items():
    app.command(old, cls=_Command, hidden=True)(COMMANDS[new])
# old option names, still accepted, not shown: option -> its name now (on every command)
OPTION_ALIASES = {"--profile": "--table"}


def _new_names(args: list[str]) -> list[str]:
    """``args`` with old option names spelled as today (``--profile x``, ``--profile=x``)."""
    out = []
    for a in args:
        name, eq, value = a.partition("=")
        out.append(OPTION_ALIASES.get(name, name) + eq + value if a.startswith("--") else a)
    return out


# options whose value may be left out (``--wait-quiet`` alone): option -> that value
OPTIONAL_VALUES = {"--wait-quiet": f"{o.WAIT_QUIET_S:g}"}


def _optional_values(args: list[str]) -> list[str]:
    """``args`` with the value of an ``OPTIONAL_VALUES`` option filled in where the next
    word is not a number (``--wait-quiet x.pte`` -> ``--wait-quiet 60 x.pte``)."""
    out = []
    for i, a in enumerate(args):
        out.append(a)
        if a in OPTIONAL_VALUES:
            following = args[i + 1] if i + 1 < len(args) else ""
            if not re.fullmatch(r"[0-9]*\.?[0-9]+", following):
                out.append(OPTIONAL_VALUES[a])
    return out


def _install_signal_handlers() -> None:
    """SIGTERM unwinds like Ctrl-C, so temporary outputs are removed on the way out."""
    if threading.current_thread() is not threading.main_thread():
        return

    def _terminate(signum, frame):  # noqa: ARG001
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, _terminate)


def _usage_error(e: Exception) -> bool:
    """typer vendors click; recognise its usage errors without importing private modules."""
    return hasattr(e, "format_message") and hasattr(e, "exit_code")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and turns every failure into one line and an exit code."""
    args = _optional_values(_new_names(list(sys.argv[1:] if argv is None else argv)))
    _install_signal_handlers()
    _state["debug"] = "--debug" in args or os.environ.get("EDGEPRUNE_DEBUG") == "1"
    try:
        rv = app(args=args, prog_name="edgeprune", standalone_mode=False)
        if rv == 130:  # typer turns KeyboardInterrupt (and our SIGTERM) into exit code 130
            err.print("error: interrupted; nothing was written", markup=False)
        return rv if isinstance(rv, int) else 0
    except typer.Exit as e:
        return int(e.exit_code)
    except EdgepruneError as e:
        if _state["debug"]:
            raise
        if ranks.other_rank():  # torchrun: a refusal every process meets; rank 0 says it
            ranks.quiet_exit(e.exit_code)
        err.print(f"error: {e.one_line()}", markup=False, soft_wrap=True)
        return e.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err.print("error: interrupted; nothing was written", markup=False, soft_wrap=True)
        return 130
    except Exception as e:
        if _state["debug"]:
            raise
        if _usage_error(e):  # bad option, missing argument, bad value
            ctx = getattr(e, "ctx", None)
            cmd = f" {ctx.info_name}" if ctx is not None and ctx.parent is not None else ""
            msg = " ".join(str(e.format_message()).split())
            if type(e).__name__ == "NoArgsIsHelpError":
                return 2
            if ranks.other_rank():  # torchrun: every process has the same argv
                ranks.quiet_exit(2)  # and rank 0 says it
            err.print(f"error: {msg} (see 'edgeprune{cmd} --help')", markup=False, soft_wrap=True)
            return 2
        msg = " ".join(str(e).split())[:300]
        err.print(
            f"error: internal error {type(e).__name__}: {msg} "
            "(rerun with --debug for the traceback)",
            markup=False,
        )
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
