"""Where the commands write: ``out`` (results, stdout) and ``err`` (notes, progress,
errors, stderr), and the few ways every command uses them."""

from __future__ import annotations

from rich.console import Console

from edgeprune.render.tables import progress as _progress_bar

out = Console()
err = Console(stderr=True, highlight=False, soft_wrap=True)


def note(source) -> None:
    """A loaded model's notes (``Source.notes``), one line each on stderr."""
    for n in source.notes:
        err.print(f"[yellow]note:[/] {n}")


def progress(label: str, bar: bool = False):
    """A progress display on stderr (``render.tables.progress``)."""
    return _progress_bar(err, label, bar)


def lines(text_lines: list[str]) -> None:
    for line in text_lines:
        out.print(line)


def print_json(obj) -> None:
    """``--json``: ``obj`` as one line of JSON on stdout, never with NaN or Infinity in it
    (not JSON: one error line instead, see ``core.schema.dumps``)."""
    from edgeprune.core.schema import dumps

    print(dumps(obj, "the --json output"))
