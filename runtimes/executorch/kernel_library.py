"""edgeprune's own ExecuTorch kernels (``runtimes/executorch/kernels/*.cpp``): built on this machine
against the executorch wheel's headers and runtime, loaded into this process's ExecuTorch
runtime when a program needs them.

A selector step that takes many small ops in the delegate (ToMe's merge: ~28 ops a
block, each with a per-run cost) runs as one kernel instead when the program is
exported with ``--custom-kernels``. The ExecuTorch runtime finds a kernel by its
operator name (``edgeprune::tome_merge.out``): the shared library registers them when
it is loaded. On a phone, ``executor_runner`` must be built with the same sources
(README: "ExecuTorch on a phone").

The library is compiled once per source, executorch version and compiler, into
``$EDGEPRUNE_CACHE`` (default ``~/.cache/edgeprune``) under a temporary name and renamed
into place; ``$CXX`` names the compiler (default ``g++``).
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import shlex
import shutil
import subprocess
import tempfile
from importlib import metadata
from pathlib import Path

from edgeprune.core.errors import EdgepruneError, MissingRuntimeError
from edgeprune.runtimes.executorch import import_executorch

SOURCES = Path(__file__).parent / "kernels"
# the operator names the kernels register (as the program's operator table spells them)
OPS = ("edgeprune::tome_merge.out",)
MARK = b"edgeprune::"  # in a program's operator table when it needs one of them
_LOADED: list[tuple[Path, ctypes.CDLL]] = []  # at most one: what this process loaded


def sources() -> list[Path]:
    return sorted(SOURCES.glob("*.cpp"))


def source_of(op: str) -> Path:
    """The source file of an operator: ``edgeprune::<name>.out`` is ``kernels/<name>.cpp``."""
    return SOURCES / f"{op.split('::', 1)[1].split('.', 1)[0]}.cpp"


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
    libs = sorted(pyb.glob("_portable_lib*.so"))
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


def ready() -> tuple[bool, str]:
    """Whether the kernels can be loaded here: built already, or a compiler to build them."""
    if library_path().is_file():
        return True, "built"
    try:
        compiler()
    except MissingRuntimeError as e:
        return False, e.message
    return True, "a C++ compiler to build them"


def build() -> Path:
    """The kernels' shared library: the cached one, else compiled here (a compiler is
    needed only then)."""
    out = library_path()
    if out.is_file():
        return out
    cxx = compiler()
    include, lib = _wheel()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".so", dir=out.parent)
    except OSError as e:
        raise EdgepruneError(
            f"cannot write edgeprune's ExecuTorch kernels under {out.parent}: {e.strerror}",
            "set EDGEPRUNE_CACHE to a folder you can write",
        ) from None
    os.close(fd)
    try:
        res = subprocess.run(_command(cxx, include, lib, Path(tmp)), capture_output=True, text=True)
        if res.returncode != 0:
            lines = [ln.strip() for ln in res.stderr.splitlines() if ln.strip()]
            why = next((ln for ln in lines if "error" in ln), lines[-1] if lines else "")
            raise EdgepruneError(
                "building edgeprune's ExecuTorch kernels failed: "
                f"{why[:200] or f'exit {res.returncode}'}",
                f"the compiler was {' '.join(cxx)}; the sources are in {SOURCES}",
                exit_code=1,
            )
        os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return out


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


if __name__ == "__main__":  # python -m edgeprune.runtimes.executorch.kernel_library: build, print
    print(load())
