"""edgeprune's own ExecuTorch kernels (``edgeprune/core/backends/kernels/*.cpp``): built on this
machine against the executorch wheel's headers and runtime, loaded into this process's
ExecuTorch runtime when a program needs them (by the runtime here, and by export's parity
check).

A selector step that takes many small ops in the delegate (ToMe's merge: ~28 ops a
block, each with a per-run cost) runs as one kernel instead when the program is
exported with ``--custom-kernels``. The ExecuTorch runtime finds a kernel by its
operator name (``edgeprune::tome_merge.out``): the shared library registers them when
it is loaded. On a phone, ``executor_runner`` must be built with the same sources
(docs/devices.md: "Over adb (Android)").

The library is compiled once per source, executorch version and compiler, into
``$EDGEPRUNE_CACHE`` (default ``~/.cache/edgeprune``) under a temporary name and renamed
into place; ``$CXX`` names the compiler (default ``g++``), which is stopped after
``$EDGEPRUNE_CXX_TIMEOUT`` seconds (default 600).

A cached library is loaded only if it is the one built here: its sha256, recorded
beside it when it was built (``libedgeprune_kernels.so.sha256``), is recomputed and
compared before every load; a library that does not match, or has no record, is rebuilt,
never loaded. The cache folders are private (0700): one that others may write is
refused (``$EDGEPRUNE_CACHE`` itself) or made private (the folders edgeprune makes).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import hmac
import math
import os
import shlex
import shutil
import stat
import tempfile
from importlib import metadata
from pathlib import Path
from typing import Annotated

from pydantic import Field

from edgeprune.core.atomic import sha256_file, write_json_atomic
from edgeprune.core.backends.optional import import_executorch
from edgeprune.core.backends.process import run_killable
from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.core.schema import Strict, load_json, validate

SOURCES = Path(__file__).parent / "kernels"
# the operator names the kernels register (as the program's operator table spells them)
OPS = ("edgeprune::tome_merge.out",)
MARK = b"edgeprune::"  # in a program's operator table when it needs one of them
_LOADED: list[tuple[Path, ctypes.CDLL]] = []  # at most one: what this process loaded
# the compiler is stopped after this many seconds ($EDGEPRUNE_CXX_TIMEOUT overrides it)
TIMEOUT_ENV = "EDGEPRUNE_CXX_TIMEOUT"
COMPILE_TIMEOUT_S = 600.0
RECORD_SUFFIX = ".sha256"  # beside the library: its sha256 when it was built here


def sources() -> list[Path]:
    return sorted(SOURCES.glob("*.cpp"))


def source_of(op: str) -> Path:
    """The source file of an operator: ``edgeprune::<name>.out`` is ``kernels/<name>.cpp``."""
    return SOURCES / f"{op.split('::', 1)[1].split('.', 1)[0]}.cpp"


def source_name(op: str) -> str:
    """The source file of an operator as the repository spells it (manifests):
    ``edgeprune/core/backends/kernels/<name>.cpp``."""
    return source_of(op).relative_to(SOURCES.parents[3]).as_posix()


def needs_kernels(program: bytes) -> bool:
    """Whether an ExecuTorch program calls one of edgeprune's kernels."""
    return MARK in program


def compiler_command() -> list[str]:
    """``$CXX`` (default ``g++``) as a command (``ccache g++`` is two words), unresolved."""
    return shlex.split(os.environ.get("CXX") or "g++") or ["g++"]


def compiler() -> list[str]:
    """The C++ compiler command to build with, refused in one line when there is none."""
    cmd = compiler_command()
    path = shutil.which(cmd[0])
    if path is None:
        raise MissingRuntimeError(
            f"the program uses edgeprune's ExecuTorch kernels ({', '.join(OPS)}), and "
            f"building them here needs a C++ compiler: '{cmd[0]}' was not found",
            "install g++ (Debian: apt-get install g++) or set CXX; "
            "or export without --custom-kernels",
        )
    return [path, *cmd[1:]]


def _wheel() -> tuple[Path, Path]:
    """The executorch wheel's header folder and the runtime library the kernels link to."""
    root = Path(next(iter(import_executorch().__path__)))  # a namespace package: no __file__
    pyb = root / "extension" / "pybindings"
    # 1.4: the runtime (with its kernel registry) is inside the pybindings module;
    # 1.5: it is lib/libexecutorch.so, which the pybindings module links to
    libs = sorted(pyb.glob("_portable_lib*.so")) + sorted((root / "lib").glob("libexecutorch.so"))
    include = root / "include"
    if not libs or not (include / "executorch").is_dir():
        raise MissingRuntimeError(
            "the executorch package has no headers or runtime library to build "
            "edgeprune's kernels against",
            'reinstall it: pip install "edgeprune[executorch]"',
        )
    return include, libs[0]


FLAGS = ("-O3", "-std=c++17", "-fPIC", "-shared", "-DC10_USING_CUSTOM_GENERATED_MACROS")


def _command(cxx: list[str], include: Path, lib: Path, out: Path) -> list[str]:
    c10 = include / "executorch" / "runtime" / "core" / "portable_type" / "c10"
    return [
        *cxx,
        *FLAGS,  # the last one: the wheel's c10 headers, without cmake's generated macros
        f"-I{include}",
        f"-I{c10}",
        *(str(s) for s in sources()),
        "-o",
        str(out),
        f"-L{lib.parent}",
        f"-l:{lib.name}",
        f"-Wl,-rpath,{lib.parent}",
    ]


def cache_dir() -> Path:
    base = os.environ.get("EDGEPRUNE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "edgeprune"


def library_path() -> Path:
    """Where the library for these sources, this executorch (version, headers, runtime
    library), this compiler command and these flags is cached, built or not."""

    include, lib = _wheel()
    key = hashlib.sha256()
    for s in sources():
        key.update(s.name.encode() + s.read_bytes())
    registry = include / "executorch" / "runtime" / "kernel" / "operator_registry.h"
    stamps = [f"{p}:{p.stat().st_size}:{p.stat().st_mtime_ns}" for p in (registry, lib)]
    key.update(
        "|".join([metadata.version("executorch"), *compiler_command(), *FLAGS, *stamps]).encode()
    )
    return cache_dir() / "executorch-kernels" / key.hexdigest()[:16] / "libedgeprune_kernels.so"


class _Record(Strict):
    """The record beside a library built here: its sha256."""

    sha256: Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]


def record_path(library: Path) -> Path:
    """Where the sha256 of ``library`` is recorded when it is built here."""
    return library.with_name(library.name + RECORD_SUFFIX)


def verified(library: Path) -> bool:
    """Whether ``library`` is the one built here: its sha256, recomputed now, equals the
    one recorded beside it when it was built (False when either is missing)."""
    record = record_path(library)
    if not (library.is_file() and record.is_file()):
        return False
    try:
        want = validate(_Record, load_json(record, "record"), "record").sha256
        return hmac.compare_digest(want, sha256_file(library))
    except (EdgepruneError, OSError):
        return False


def _private(folder: Path) -> None:
    """Make the cache folders from ``cache_dir()`` down to ``folder`` (0700 when made)
    and refuse to use them if another user owns one or others may write one: a folder
    edgeprune made under the cache is made private again (chmod 0700); ``cache_dir()``
    itself, when ``$EDGEPRUNE_CACHE`` names it, is refused instead."""
    root = cache_dir()
    parts = folder.relative_to(root).parts
    for level in [root] + [root.joinpath(*parts[:i]) for i in range(1, len(parts) + 1)]:
        try:
            if level == root:
                root.parent.mkdir(parents=True, exist_ok=True)
            level.mkdir(mode=0o700, exist_ok=True)
            st = level.stat()
        except OSError as e:
            raise EdgepruneError(
                f"cannot write edgeprune's ExecuTorch kernels under {level}: {e.strerror or e}",
                "set EDGEPRUNE_CACHE to a folder you can write",
            ) from None
        if st.st_uid != os.geteuid():
            raise EdgepruneError(
                f"the kernel cache folder {level} belongs to another user: a library "
                "loaded from it could be anyone's",
                "set EDGEPRUNE_CACHE to a folder of your own",
            )
        if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
            if level == root and os.environ.get("EDGEPRUNE_CACHE"):
                raise EdgepruneError(
                    f"the kernel cache folder {level} is writable by others: a library "
                    "loaded from it could be replaced",
                    f"chmod go-w {level}, or set EDGEPRUNE_CACHE to a private folder",
                )
            os.chmod(level, 0o700)


def compile_timeout() -> float:
    """How long the compiler may run: ``$EDGEPRUNE_CXX_TIMEOUT`` seconds, else 600."""
    text = os.environ.get(TIMEOUT_ENV)
    if not text:
        return COMPILE_TIMEOUT_S
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not (math.isfinite(value) and 0 < value <= 1e6):
        raise EdgepruneError(
            f"{TIMEOUT_ENV}={text} is not a number of seconds", "e.g. 600 (0 < s ≤ 1000000)"
        )
    return value


def ready() -> tuple[bool, str]:
    """Whether the kernels can be loaded here: built here already (its hash checked), or
    a compiler to build them."""
    if verified(library_path()):
        return True, "built"
    try:
        compiler()
    except MissingRuntimeError as e:
        return False, e.message
    return True, "a C++ compiler to build them"


def build() -> Path:
    """The kernels' shared library: the cached one if it is the one built here (its
    sha256 checked against the record), else compiled here (a compiler is needed only
    then) and its sha256 recorded."""
    out = library_path()
    _private(out.parent)
    if verified(out):
        return out
    try:
        cxx = compiler()
    except MissingRuntimeError as e:
        if out.exists():
            raise MissingRuntimeError(
                f"the cached kernel library {out} does not match the sha256 recorded when "
                f"it was built here, so it is not loaded; it cannot be rebuilt: {e.message}",
                e.hint,
            ) from None
        raise
    _compile(cxx, out)
    return out


def _compile(cxx: list[str], out: Path) -> None:
    """Compile into a temporary file beside ``out``, record its sha256, rename it into
    place; the compiler is stopped after ``compile_timeout()`` seconds."""
    include, lib = _wheel()
    limit = compile_timeout()
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=out.parent)
    except OSError as e:
        raise EdgepruneError(
            f"cannot write edgeprune's ExecuTorch kernels under {out.parent}: {e.strerror}",
            "set EDGEPRUNE_CACHE to a folder you can write",
        ) from None
    os.close(fd)
    try:
        res = run_killable(
            _command(cxx, include, lib, Path(tmp)), limit, f"the C++ compiler ({cxx[0]})",
            hint=f"raise {TIMEOUT_ENV} (seconds, now {limit:g}), or check $CXX",
        )  # fmt: skip
        if res.returncode != 0:
            lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
            why = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "")
            raise EdgepruneError(
                "building edgeprune's ExecuTorch kernels failed: "
                f"{why[:200] or f'exit {res.returncode}'}",
                f"the compiler was {' '.join(cxx)}; the sources are in {SOURCES}",
                exit_code=1,
            )
        digest = sha256_file(Path(tmp))
        os.replace(tmp, out)
        write_json_atomic(record_path(out), {"sha256": digest, "library": out.name})
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)


def load() -> Path:
    """Build if needed and load the kernels into this process's ExecuTorch runtime: once
    per process (the runtime refuses a second registration of an operator name)."""
    if _LOADED:
        return _LOADED[0][0]
    path = build()
    # the runtime's kernel registry lives in the pybindings library: load it first
    import_executorch("extension.pybindings.portable_lib")
    flags = getattr(os, "RTLD_GLOBAL", 0) | getattr(os, "RTLD_NOW", 0)
    try:
        _LOADED.append((path, ctypes.CDLL(str(path), mode=flags)))
    except OSError as e:
        raise EdgepruneError(
            f"edgeprune's ExecuTorch kernels do not load: {' '.join(str(e).split())[:160]}",
            f"delete {path.parent} to rebuild them",
        ) from None
    return path


if __name__ == "__main__":  # python -m edgeprune.core.backends.executorch_kernels: build, print
    print(load())
