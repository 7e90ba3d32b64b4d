"""A throwaway OpenSSH server for the SFTP end-to-end tests (a helper, not a test module).

``sftp_server(workdir, inbox)`` starts the system's ``sshd`` in the foreground
on a free 127.0.0.1 port, with a host key and a client key generated under
``workdir``, public-key login for the current user only, and nothing but
``internal-sftp`` with ``inbox`` as the starting folder (no chroot: that
needs root-owned folders all the way up). The real ``sftp`` client then
uploads into the inbox the way a partner's would.

Where ``sshd``, ``sftp`` or ``ssh-keygen`` is missing the tests skip, saying
which package to install; with ``DROPZONE_REQUIRE_SFTP=1`` in the environment
(CI) a missing tool is a failure instead.
"""

from __future__ import annotations

import getpass
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
APT_LINE = "apt-get install -y --no-install-recommends openssh-server openssh-client"
#: Bytes per SFTP write request. Pinned so a killed upload always ends on a multiple of it.
BUFFER = 32768
#: OpenSSH's privilege separation folder, needed when sshd runs as root (Debian makes it at service start).
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class Tools:
    sshd: str
    sftp: str
    ssh_keygen: str


def find_tools() -> Tools:
    """The OpenSSH binaries, or skip (fail under ``DROPZONE_REQUIRE_SFTP=1``) naming what is missing."""
    sshd = next((p for p in SSHD_CANDIDATES if os.access(p, os.X_OK)), None) or shutil.which("sshd")
    sftp = shutil.which("sftp")
    keygen = shutil.which("ssh-keygen")
    missing = [name for name, path in (("sshd", sshd), ("sftp", sftp), ("ssh-keygen", keygen)) if not path]
    if missing:
        reason = f"SFTP end-to-end tests need OpenSSH ({', '.join(missing)} not found): {APT_LINE}"
        if os.environ.get("DROPZONE_REQUIRE_SFTP") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    assert sshd and sftp and keygen
    return Tools(sshd=sshd, sftp=sftp, ssh_keygen=keygen)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _listening(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2) as conn:
            conn.settimeout(0.5)
            return conn.recv(4).startswith(b"SSH-")  # sshd's banner: it is serving, not just bound
    except OSError:
        return False


@dataclass(frozen=True)
class SftpServer:
    """A running sshd; ``upload``/``start`` drive the real ``sftp`` client against it."""

    tools: Tools
    port: int
    user: str
    key: Path
    inbox: Path
    workdir: Path
    log: Path

    def command(self, batch: Path, *, limit_kbit: int | None = None) -> list[str]:
        cmd = [
            self.tools.sftp,
            "-b", str(batch),
            "-B", str(BUFFER),
            "-i", str(self.key),
            "-P", str(self.port),
            "-F", "/dev/null",  # no user or system client configuration
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
        ]
        if limit_kbit is not None:
            cmd += ["-l", str(limit_kbit)]
        return [*cmd, f"{self.user}@127.0.0.1"]

    def _batch(self, commands: Sequence[str]) -> Path:
        batch = self.workdir / f"batch-{time.monotonic_ns()}.txt"
        batch.write_text("".join(f"{c}\n" for c in commands))
        return batch

    @staticmethod
    def _env() -> dict[str, str]:
        return {k: v for k, v in os.environ.items() if k not in ("SSH_AUTH_SOCK", "SSH_AGENT_PID")}

    def start(self, commands: Sequence[str], *, limit_kbit: int | None = None) -> subprocess.Popen[bytes]:
        """Run a batch in the background, in its own process group (``kill`` takes sftp and its ssh)."""
        return subprocess.Popen(
            self.command(self._batch(commands), limit_kbit=limit_kbit),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=self._env(),
            start_new_session=True,
        )

    def upload(self, commands: Sequence[str], *, limit_kbit: int | None = None, timeout: float = 60) -> str:
        """Run a batch to the end; fail with sftp's own words if it fails."""
        proc = self.start(commands, limit_kbit=limit_kbit)
        try:
            out, err = proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            kill(proc)
            raise
        assert proc.returncode == 0, f"sftp exited {proc.returncode}: {err.decode(errors='replace')}\n{self.log_text()}"
        return out.decode(errors="replace")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


def kill(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL an sftp started by ``SftpServer.start``, with its ssh: a client that dies mid-upload."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.communicate(timeout=10)


def _keygen(tools: Tools, path: Path) -> None:
    subprocess.run(
        [tools.ssh_keygen, "-q", "-t", "ed25519", "-N", "", "-C", "dropzone-test", "-f", str(path)],
        check=True,
        capture_output=True,
        timeout=30,
    )


@contextmanager
def sftp_server(workdir: Path, inbox: Path, *, timeout: float = 10.0) -> Iterator[SftpServer]:
    """Start sshd serving only ``internal-sftp`` rooted at ``inbox``; stop it on exit."""
    tools = find_tools()
    workdir.mkdir(parents=True, exist_ok=True)
    inbox.mkdir(parents=True, exist_ok=True)
    host_key = workdir / "ssh_host_ed25519_key"
    client_key = workdir / "client_ed25519"
    _keygen(tools, host_key)
    _keygen(tools, client_key)
    authorized = workdir / "authorized_keys"
    authorized.write_text(client_key.with_suffix(".pub").read_text())
    authorized.chmod(0o600)
    user = getpass.getuser()
    if os.geteuid() == 0 and not PRIVSEP_DIR.is_dir():
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)

    if any(ch.isspace() or ch in "\"'%" for ch in str(inbox)):
        # sshd passes the words on unquoted, and a start folder that does not exist is
        # silently replaced by the home folder: refuse rather than upload elsewhere.
        raise ValueError(f"the inbox path must not contain spaces, quotes or %: {inbox}")
    sftp = f"internal-sftp -l INFO -d {inbox}"
    log = workdir / "sshd.log"
    proc: subprocess.Popen[bytes] | None = None
    for _attempt in range(3):  # the free port can be taken between choosing and binding it
        port = _free_port()
        config = workdir / "sshd_config"
        config.write_text(
            f"""\
Port {port}
ListenAddress 127.0.0.1
AddressFamily inet
HostKey {host_key}
PidFile none
UsePAM no
StrictModes no
AuthorizedKeysFile {authorized}
AuthenticationMethods publickey
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
PermitRootLogin prohibit-password
AllowUsers {user}
DisableForwarding yes
PermitTTY no
PermitUserRC no
LogLevel VERBOSE
Subsystem sftp {sftp}
ForceCommand {sftp}
"""
        )
        with log.open("ab") as out:
            proc = subprocess.Popen(
                [tools.sshd, "-D", "-e", "-f", str(config)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        up = False
        while proc.poll() is None and time.monotonic() < deadline:
            up = _listening(port)
            if up:
                break
            time.sleep(0.02)
        if up:
            break
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)
            raise AssertionError(f"sshd did not listen on 127.0.0.1:{port} within {timeout} s:\n{log.read_text()}")
        if "Address already in use" not in log.read_text():
            raise AssertionError(f"sshd exited {proc.returncode}:\n{log.read_text()}")
    else:
        raise AssertionError(f"sshd found no free port:\n{log.read_text()}")

    server = SftpServer(tools=tools, port=port, user=user, key=client_key, inbox=inbox, workdir=workdir, log=log)
    try:
        # sftp-server falls back to the home folder when -d fails: make sure uploads land in the inbox.
        where = server.upload(["pwd"])
        assert f"Remote working directory: {inbox}" in where, f"sftp did not start in the inbox:\n{where}"
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)


__all__ = ["APT_LINE", "BUFFER", "SftpServer", "Tools", "find_tools", "kill", "sftp_server"]
