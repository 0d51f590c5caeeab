"""The SSH transport for real: an OpenSSH server on 127.0.0.1 with throwaway keys,
its own known_hosts and an ssh config passed with --ssh-config (the user's own
~/.ssh is never read). The 'remote' is this machine, running this python."""

from __future__ import annotations

import getpass
import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

from edgeprune.core.arch import get_arch
from edgeprune.core.errors import EdgepruneError
from edgeprune.latency.table import load
from edgeprune.profiling.pieces import make_block, module_to_onnx
from edgeprune.runtimes.transports.ssh import SSHTransport
from tests.conftest import need_tool, tool_unavailable

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> str:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path.with_suffix(".pub").read_text().strip()


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    # missing: skip, or fail under CI=true (tests/conftest.py need_tool)
    for tool in ("ssh", "scp", "ssh-keygen"):
        need_tool(tool)
    need_tool("sshd", SSHD)
    d = tmp_path_factory.mktemp("sshd")
    host_pub = _keygen(d / "host_key")
    other_pub = _keygen(d / "other_key")
    user_pub = _keygen(d / "user_key")
    (d / "authorized_keys").write_text(user_pub + "\n")
    port, closed = _free_port(), _free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'host_key'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPidFile {d / 'sshd.pid'}\n"
        "PasswordAuthentication no\nKbdInteractiveAuthentication no\nUsePAM no\n"
        "StrictModes no\nPermitRootLogin prohibit-password\nSubsystem sftp internal-sftp\n"
    )
    if os.geteuid() == 0:
        os.makedirs("/run/sshd", exist_ok=True)
    proc = subprocess.Popen(
        [SSHD, "-D", "-e", "-f", str(d / "sshd_config")],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 10
    while time.time() < deadline:
        if proc.poll() is not None:
            tool_unavailable(f"sshd could not start: {proc.stderr.read().strip()[:200]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                break
        time.sleep(0.1)
    else:
        proc.kill()
        tool_unavailable("sshd did not start listening within 10 s")
    (d / "known_hosts").write_text(f"[127.0.0.1]:{port} {host_pub}\n")
    (d / "wrong_known_hosts").write_text(f"[127.0.0.1]:{port} {other_pub}\n")
    user = getpass.getuser()
    common = f"  HostName 127.0.0.1\n  User {user}\n  IdentityFile {d / 'user_key'}\n"
    common += "  IdentitiesOnly yes\n  GlobalKnownHostsFile /dev/null\n"
    (d / "ssh_config").write_text(
        f"Host edgeprune-test\n  Port {port}\n{common}  UserKnownHostsFile {d / 'known_hosts'}\n"
        f"Host wrong-key\n  Port {port}\n{common}  UserKnownHostsFile {d / 'wrong_known_hosts'}\n"
        f"Host closed-port\n  Port {closed}\n{common}  UserKnownHostsFile {d / 'known_hosts'}\n"
        f"Host wrong-user-key\n  Port {port}\n  HostName 127.0.0.1\n  User {user}\n"
        f"  IdentityFile {d / 'other_key'}\n  IdentitiesOnly yes\n"
        f"  UserKnownHostsFile {d / 'known_hosts'}\n"
    )
    try:
        ok = SSHTransport("edgeprune-test", config=str(d / "ssh_config")).reachable(10)
        if not ok[0]:
            tool_unavailable(f"cannot log in to the test sshd: {ok[1]}")
        yield SimpleNamespace(config=str(d / "ssh_config"), dir=d)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def _ssh_args(sshd, host: str = "edgeprune-test") -> tuple[str, ...]:
    return ("--host", host, "--ssh-config", sshd.config, "--remote-python", sys.executable)


def test_profile_over_ssh_same_schema(cli, sshd, tmp_path):
    out = tmp_path / "remote.json"
    code, stdout, err = cli(
        "profile", "--device", "cpu", "--arch", "deit_tiny", "--grid", "1,197", "--runs", "2",
        "--check-points", "0", "--no-halves", "--threads", "1", "--out", out, *_ssh_args(sshd),
    )  # fmt: skip
    assert code == 0, err
    t = load(out)
    assert t.measured and t.device["host"] == "edgeprune-test" and t.device["transport"] == "ssh"
    assert t.block.tokens == (1, 197) and t.device["threads"] == 1
    assert (tmp_path / "remote.png").exists()


def test_bench_over_ssh(cli, sshd, tmp_path):
    f = tmp_path / "b.onnx"
    f.write_bytes(module_to_onnx(make_block(get_arch("deit_tiny")), (1, 8, 192)))
    code, out, err = cli("bench", f, "--json", "--runs", "3", *_ssh_args(sshd))
    assert code == 0, err
    d = json.loads(out)
    assert d["runs"] == 3 and d["median_ms"] > 0 and d["host"] == "edgeprune-test"


@pytest.mark.parametrize(
    "host, needle",
    [
        ("wrong-key", "host key verification failed"),
        ("closed-port", "connection refused"),
        ("wrong-user-key", "permission denied"),
    ],
)
def test_ssh_failures_one_line(cli, sshd, tmp_path, host, needle):
    out = tmp_path / "p.json"
    code, _, err = cli(
        "profile", "--device", "cpu", "--arch", "deit_tiny", "--out", out, *_ssh_args(sshd, host)
    )
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1, err
    assert list(tmp_path.iterdir()) == []


def test_remote_edgeprune_missing(cli, sshd, tmp_path):
    f = tmp_path / "b.onnx"
    f.write_bytes(b"x")
    args = ("--host", "edgeprune-test", "--ssh-config", sshd.config)
    code, _, err = cli("bench", f, *args, "--remote-python", "/bin/false-python")
    assert code == 2 and "edgeprune is not installed" in err, err


def test_timeout_kills_remote_and_removes_tempdir(sshd):
    t = SSHTransport("edgeprune-test", config=sshd.config, timeout=2)
    marker = "31.4159"
    with t.tempdir() as d:
        assert Path(d).is_dir()  # the 'remote' is this machine
        start = time.time()
        with pytest.raises(EdgepruneError, match="did not finish"):
            t.run(["sleep", marker], cwd=d)
        assert time.time() - start < 20
        assert not Path(d).exists()  # removed at once on timeout
    time.sleep(0.5)
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"sleep {marker}" not in ps
