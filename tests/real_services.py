"""Real services on this machine for the launcher tests: an OpenSSH ``sshd`` and a one-node Slurm.

Each is started from a generated configuration in a temporary folder, on free loopback
ports, and stopped (with everything it started) when the test is done. Where one cannot
run here — the program is not installed, or the tests do not run as root, which
``slurmd`` and ``sshd`` need — the test is skipped with the reason.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import RUN_MARK

SSHD = "/usr/sbin/sshd"
START_TIMEOUT_S = 20.0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}: {log.read_text(errors='replace')[-2000:]}")
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on port {port} in {START_TIMEOUT_S:.0f} s")


def need_root(program: str) -> None:
    if not Path(program).exists() and shutil.which(program) is None:
        pytest.skip(f"{program} is not installed (Debian: see .ci/run)")
    if os.geteuid() != 0:
        pytest.skip(f"{program} needs root here")


@dataclass
class Sshd:
    """A running sshd on 127.0.0.1: log in as ``user`` with ``client_key``; its host key is in ``known_hosts``."""

    port: int
    user: str
    client_key: Path
    known_hosts: Path
    proc: subprocess.Popen


def start_sshd(folder: Path) -> Sshd:
    """sshd -D on a free port, accepting one generated client key for this user."""
    need_root(SSHD)
    folder.mkdir(parents=True, exist_ok=True)
    for name in ("host_key", "client_key"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(folder / name)], check=True)
    (folder / "authorized_keys").write_text((folder / "client_key.pub").read_text())
    port = free_port()
    (folder / "known_hosts").write_text(f"[127.0.0.1]:{port} " + (folder / "host_key.pub").read_text())
    name, _, value = RUN_MARK.decode().partition("=")
    config = folder / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {folder / 'host_key'}",
        f"AuthorizedKeysFile {folder / 'authorized_keys'}", f"PidFile {folder / 'sshd.pid'}",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        "PermitRootLogin prohibit-password", "AllowTcpForwarding no", "X11Forwarding no",
        # The sessions' processes carry this test run's mark, so the suite's leak check sees them.
        f"SetEnv {name}={value}", "",
    ]))
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)  # sshd's privilege separation folder
    log = folder / "sshd.log"
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(config)], stdout=subprocess.DEVNULL,
                            stderr=open(log, "wb"), start_new_session=True)
    try:
        wait_for_port(port, proc, "sshd", log)
    except RuntimeError:
        stop_group(proc)
        raise
    import pwd

    return Sshd(port, pwd.getpwuid(os.getuid()).pw_name, folder / "client_key", folder / "known_hosts", proc)


def stop_group(proc: subprocess.Popen, grace_s: float = 5.0) -> None:
    """SIGTERM a daemon's process group, then SIGKILL what is left of it."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(grace_s)
            break
        except subprocess.TimeoutExpired:
            continue


@dataclass
class SlurmCluster:
    """munged, slurmctld and slurmd of a one-node cluster; ``env`` points Slurm's commands at it."""

    folder: Path
    env: dict[str, str]
    daemons: list[subprocess.Popen]
    cpus: int

    def run(self, *args: str) -> str:
        return subprocess.run(args, env=self.env, check=True, capture_output=True, text=True, timeout=60).stdout

    def stop(self) -> None:
        try:
            jobs = self.run("squeue", "--noheader", "--format", "%i").split()
            if jobs:
                self.run("scancel", "--signal=KILL", "--full", *jobs)
                self.run("scancel", *jobs)
        except (subprocess.SubprocessError, OSError):
            pass
        for proc in reversed(self.daemons):
            stop_group(proc)


SLURM_CONF = """\
ClusterName=chainconsole-test
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={d_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={folder}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={folder}/state
SlurmdSpoolDir={folder}/spool
SlurmctldPidFile={folder}/slurmctld.pid
SlurmdPidFile={folder}/slurmd.pid
SlurmctldLogFile={folder}/slurmctld.log
SlurmdLogFile={folder}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
ReturnToService=2
KillWait=2
MinJobAge=2
InactiveLimit=0
MessageTimeout=10
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
MpiDefault=none
SwitchType=switch/none
SlurmdParameters=config_overrides
NodeName={host} NodeAddr=127.0.0.1 CPUs={cpus} State=UNKNOWN
PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


def start_slurm(folder: Path, cpus: int = 2) -> SlurmCluster:
    """A real one-node Slurm in ``folder``: munged with its own key and socket, slurmctld, slurmd."""
    for program in ("munged", "slurmctld", "slurmd", "sbatch"):
        need_root(program)
    host = socket.gethostname().split(".")[0]
    for name in ("munge", "state", "spool"):
        (folder / name).mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(folder, 0o755)  # munged wants to reach its socket through every folder above it
    key = folder / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    ctld_port, d_port = free_port(), free_port()
    conf = folder / "slurm.conf"
    conf.write_text(SLURM_CONF.format(host=host, folder=folder, ctld_port=ctld_port, d_port=d_port, cpus=cpus))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    daemons: list[subprocess.Popen] = []
    cluster = SlurmCluster(folder, env, daemons, cpus)
    try:
        munge = folder / "munge"
        daemons.append(subprocess.Popen(
            ["munged", "-F", "-f", f"--socket={munge / 'munge.socket'}", f"--key-file={key}",
             f"--pid-file={munge / 'munged.pid'}", f"--log-file={munge / 'munged.log'}",
             f"--seed-file={munge / 'seed'}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True))
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (munge / "munge.socket").exists():
            if time.monotonic() > deadline or daemons[0].poll() is not None:
                raise RuntimeError("munged did not start")
            time.sleep(0.05)
        log = folder / "slurmctld.log"
        daemons.append(subprocess.Popen(["slurmctld", "-D", "-i"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_port(ctld_port, daemons[-1], "slurmctld", log)
        daemons.append(subprocess.Popen(["slurmd", "-D"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True))
        wait_for_port(d_port, daemons[-1], "slurmd", folder / "slurmd.log")
        while "idle" not in cluster.run("sinfo", "--noheader", "--format", "%t"):
            if time.monotonic() > deadline + START_TIMEOUT_S:
                raise RuntimeError("the Slurm node did not become idle: " + cluster.run("sinfo"))
            time.sleep(0.2)
    except (RuntimeError, subprocess.SubprocessError, OSError) as exc:
        cluster.stop()
        pytest.skip(f"cannot start a Slurm cluster here: {exc}")
    return cluster
