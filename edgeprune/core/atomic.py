"""Write files so that a reader never sees half of one: temp name, fsync, rename."""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from edgeprune.core.errors import EdgepruneError
from edgeprune.core.schema import dumps


def check_writable_target(path: Path, force: bool = False) -> None:
    """Fail early, before any work, if ``path`` cannot be written as asked."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.exists():
        raise EdgepruneError(f"output directory {parent} does not exist", "create it first")
    if not parent.is_dir():
        raise EdgepruneError(f"{parent} is not a directory")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgepruneError(f"output directory {parent} is not writable")
    if path.is_dir():
        raise EdgepruneError(f"output {path} is a directory", "give a file path")
    if path.exists() and not force:
        raise EdgepruneError(f"{path} already exists", "pass --force to overwrite it")


@dataclass(frozen=True)
class Output:
    """An output for :func:`check_outputs` that is more than a file path: the suffix its
    kind needs (``.png`` for a plot, ``.json`` for a table), or a folder."""

    path: Path
    suffix: str | None = None
    folder: bool = False
    #: a file the command keeps between runs and may find there (a resume file): checked
    #: against the inputs and the other outputs, but its existing is no conflict
    resumed: bool = False


def check_outputs(
    outputs: Mapping[str, Path | Output | None],
    inputs: Mapping[str, str | Path | None] | None = None,
    force: bool = False,
) -> None:
    """Every output of one command, checked together before any work. Keys name each
    path as the user knows it (``"--out"``, ``"--plot"``, ``"the plot beside --out"``);
    None values are skipped (an input may be a SRC string: a built-in spec names no
    file). Refused, in this order: an output without its kind's suffix; an output that
    is an input (the same file after ``resolve()``, or the same inode), or a folder
    output holding an input; two outputs that are the same file; then each output as
    :func:`check_writable_target` (a folder: :func:`check_writable_dir_target`) would
    refuse it (an existing one without ``force``)."""

    outs = {k: v if isinstance(v, Output) else Output(Path(v)) for k, v in outputs.items() if v}
    ins = {k: Path(v) for k, v in (inputs or {}).items() if v}
    for name, o in outs.items():
        if o.suffix is not None and o.path.suffix.lower() != o.suffix:
            raise EdgepruneError(f"{name} {o.path} should end in {o.suffix}")
    for name, o in outs.items():
        for what, path in ins.items():
            held = "is" if same_file(o.path, path) else "holds" if o.folder else None
            if held == "holds" and not _inside(path, o.path):
                held = None
            if held is not None:
                raise EdgepruneError(
                    f"{name} {o.path} {held} the input {what} {path}", "write it elsewhere"
                )
    names = list(outs)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            if same_file(outs[a].path, outs[b].path):
                raise EdgepruneError(
                    f"{a} and {b} are the same file {outs[a].path}", "give them different names"
                )
    for o in outs.values():
        check = check_writable_dir_target if o.folder else check_writable_target
        check(o.path, force or o.resumed)


def same_file(a: Path, b: Path) -> bool:
    """``a`` and ``b`` name one file: equal once resolved (links followed), or one inode."""
    try:
        if Path(a).resolve() == Path(b).resolve():
            return True
    except (OSError, RuntimeError):  # a link loop
        pass
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        return False


def _inside(path: Path, folder: Path) -> bool:
    try:
        return Path(path).resolve().is_relative_to(Path(folder).resolve())
    except (OSError, RuntimeError):
        return False


@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it into place on success,
    remove it on any failure (including KeyboardInterrupt)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or ".")
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())  # mkstemp makes 0600; finished files follow umask
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            tmp_path.unlink()
        raise


@contextlib.contextmanager
def output_lock(path: Path, wait: bool = False) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` while it is being produced, so that two runs
    writing the same output never interleave: the second fails cleanly (or waits).

    The lock is ``flock`` on a hidden ``.<name>.lock`` beside the output; it is
    released when the process ends, however it ends."""

    path = Path(path)
    lock = path.parent / f".{path.name}.lock"
    for _attempt in range(5):
        fd = os.open(lock, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            raise EdgepruneError(
                f"another edgeprune process is writing {path}",
                "wait for it to finish, or choose another --out",
            ) from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the previous holder removed the file as we locked it: retry
    else:
        raise EdgepruneError(f"could not lock {path} for writing", "try again")
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: Path, text: str) -> None:
    with atomic_path(Path(path)) as tmp:
        tmp.write_text(text)


def write_json_atomic(path: Path, obj: object) -> None:
    text = dumps(obj, str(path), indent=2, sort_keys=False)  # never NaN/Infinity
    write_text_atomic(path, text + "\n")


def check_writable_dir_target(path: Path, force: bool = False) -> None:
    """Like :func:`check_writable_target`, for an artifact that is a directory
    (a CoreML ``.mlpackage``)."""
    parent = path.parent if str(path.parent) else Path(".")
    if not parent.is_dir():
        raise EdgepruneError(f"output directory {parent} does not exist", "create it first")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise EdgepruneError(f"output directory {parent} is not writable")
    if path.exists() and not path.is_dir():
        raise EdgepruneError(f"output {path} exists and is not a directory")
    if path.exists() and not force:
        raise EdgepruneError(f"{path} already exists", "pass --force to overwrite it")


@contextlib.contextmanager
def atomic_dir(path: Path) -> Iterator[Path]:
    """Yield a temporary directory beside ``path`` to build a directory artifact in
    (its contents go *inside* the yielded path); on success it replaces ``path``
    (an old one is moved aside first and removed after), on failure it is removed."""

    path = Path(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent or "."))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
        old = None
        if path.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=tmp.parent))
            os.replace(path, old / "x")
        os.replace(tmp, path)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def sha256_file(path: Path) -> str:
    """The sha256 of the file ``path`` (hex), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()
