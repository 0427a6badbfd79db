"""A one-node SLURM cluster on localhost for the tests: munge, MariaDB + slurmdbd (so that sacct, the plugin's status
command, answers as on a real cluster), slurmctld and slurmd. Each daemon runs in the foreground as a child of this
process, with its files under one folder, and is stopped by its pid. Debian's packages are installed when missing."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from string import Template

TEMPLATES = Path(__file__).parent / "slurm"
PACKAGES = ["munge", "mariadb-server", "slurmdbd", "slurmctld", "slurmd", "slurm-client"]
TOOLS = ["munged", "mungekey", "mariadb-install-db", "mariadbd", "slurmdbd", "slurmctld", "slurmd", "sbatch", "sacct"]
SBIN = "/usr/local/sbin:/usr/sbin:/sbin"
# The jobstep plugin starts each job's `srun` without the SLURM_* variables, SLURM_CONF included, so srun reads the
# default configuration path: the cluster's slurm.conf is linked there while it runs.
DEFAULT_CONF = Path("/etc/slurm/slurm.conf")
PARTITION = "test"  # the partition the tests ask for; Default=NO, so a job lands in it only if the plugin asks
DEFAULT_PARTITION = "fallback"  # the cluster's default, on the same node: where a job without --partition goes
# What cluster set-up raises when this machine refuses it (a command failing or hanging, a file it may not write, an
# answer it cannot parse): turned into Unavailable with the message, so the tests skip (or fail) saying why.
SETUP_ERRORS = (subprocess.CalledProcessError, subprocess.TimeoutExpired, OSError, RuntimeError, KeyError, ValueError)


class Unavailable(Exception):
    """This machine cannot run the test cluster; the message says why."""


def setup(*cmd: str, env: dict[str, str]) -> str:
    """A set-up command's stdout; its failure is the machine refusing the cluster, in the command's own words."""
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120, check=False)
    if done.returncode:
        raise Unavailable(f"{' '.join(cmd)} failed ({done.returncode}): {(done.stderr or done.stdout).strip()[-1500:]}")
    return done.stdout


def unavailable(exc: BaseException) -> Unavailable:
    """A set-up error as Unavailable, keeping its message (a failed command's stderr included)."""
    if isinstance(exc, subprocess.CalledProcessError):
        said = exc.stderr or exc.output or ""
        said = said.decode(errors="replace") if isinstance(said, bytes) else said
        return Unavailable(f"{exc}: {said.strip()[-1500:]}" if said.strip() else str(exc))
    return Unavailable(f"cluster set-up failed: {type(exc).__name__}: {exc}")


@dataclass
class Cluster:
    root: Path
    env: dict[str, str]
    partition: str = PARTITION
    version: str = ""
    daemons: list[subprocess.Popen] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True) -> str:
        """A SLURM client command against this cluster; its stdout."""
        done = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=60, check=False)
        if check and done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def start(self, name: str, *cmd: str) -> subprocess.Popen:
        with open(self.root / "log" / f"{name}.out", "w") as log:
            proc = subprocess.Popen(cmd, env=self.env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.daemons.append(proc)
        return proc

    def wait(self, what: str, ready, proc: subprocess.Popen, seconds: float = 30) -> None:
        """Poll ``ready()`` until it holds; a daemon that exits or a timeout is the machine refusing, with its log."""
        deadline = time.monotonic() + seconds
        while not ready():
            if proc.poll() is not None or time.monotonic() > deadline:
                logs = "\n".join(f"{p.name}: {p.read_text()[-1500:]}" for p in sorted((self.root / "log").iterdir()))
                raise Unavailable(f"{what} did not start (exit code {proc.poll()}):\n{logs}")
            time.sleep(0.2)

    def stop(self) -> None:
        """Cancel what is still queued, then stop every daemon this cluster started, newest first, by pid."""
        if self.daemons and self.daemons[-1].poll() is None and shutil.which("scancel", path=self.env["PATH"]):
            self.run("scancel", "--full", "--user", "root", check=False)
            deadline = time.monotonic() + 30
            while self.run("squeue", "-h", "-o", "%i", check=False).strip() and time.monotonic() < deadline:
                time.sleep(0.5)
        for proc in reversed(self.daemons):
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=20)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.daemons.clear()
        if DEFAULT_CONF.is_symlink() and DEFAULT_CONF.resolve() == (self.root / "slurm.conf").resolve():
            DEFAULT_CONF.unlink()


def install() -> None:
    """Debian's SLURM, munge and MariaDB packages, when a tool is missing; their services are not started."""
    path = f"{os.environ['PATH']}:{SBIN}"
    missing = [t for t in TOOLS if not shutil.which(t, path=path)]
    if not missing:
        return
    if os.geteuid() != 0 or not shutil.which("apt-get"):
        raise Unavailable(f"{', '.join(missing)} missing, and installing them needs root and apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    policy = Path("/usr/sbin/policy-rc.d")  # Debian's switch that stops package scripts from starting services
    own_policy = not policy.exists()
    if own_policy:
        policy.write_text("#!/bin/sh\nexit 101\n")
        policy.chmod(0o755)
    try:
        for cmd in (
            ["apt-get", "update", "-q"],
            ["apt-get", "install", "-y", "-q", "--no-install-recommends", *PACKAGES],
        ):
            done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600, check=False)
            if done.returncode:
                raise Unavailable(f"{' '.join(cmd)} failed: {done.stdout[-1000:]}{done.stderr[-1000:]}")
    finally:
        if own_policy:
            policy.unlink()


def free_ports(count: int) -> list[int]:
    socks = [socket.socket() for _ in range(count)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def node_resources(env: dict[str, str]) -> tuple[int, int]:
    """CPUs and memory (MB) as slurmd itself detects them, so the node is never drained for claiming more."""
    out = setup("slurmd", "-C", env=env)
    fields = dict(f.split("=", 1) for f in out.split() if "=" in f)
    return int(fields["CPUs"]), int(fields["RealMemory"])


def start_cluster(root: Path) -> Cluster:
    """Install if needed, then start munged, MariaDB, slurmdbd, slurmctld and slurmd; ready once the node is idle.
    Any set-up failure is raised as Unavailable with its message, every daemon started so far stopped."""
    try:
        return _start_cluster(root)
    except SETUP_ERRORS as exc:
        raise unavailable(exc) from exc


def _start_cluster(root: Path) -> Cluster:
    install()
    if os.geteuid() != 0:
        raise Unavailable("slurmd must run as root")
    if DEFAULT_CONF.is_symlink() and not DEFAULT_CONF.exists():
        DEFAULT_CONF.unlink()  # left by a test cluster that was killed before it could stop
    if DEFAULT_CONF.exists():
        raise Unavailable(f"{DEFAULT_CONF} exists: this machine has its own SLURM (or another test cluster runs)")
    for sub in ("run", "log", "state", "spool", "db", "munge"):
        (root / sub).mkdir(parents=True, mode=0o700)
    env = {**os.environ, "PATH": f"{os.environ['PATH']}:{SBIN}", "SLURM_CONF": str(root / "slurm.conf")}
    cluster = Cluster(root, env)
    try:
        _start_daemons(cluster)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def _start_daemons(c: Cluster) -> None:
    root, env = c.root, c.env
    db_port, dbd_port, ctld_port, slurmd_port = free_ports(4)
    cpus, memory = node_resources(env)
    host = socket.gethostname().split(".")[0]
    values = {
        "root": root,
        "host": host,
        "node": host,
        "cpus": cpus,
        "memory": memory,
        "partition": c.partition,
        "default_partition": DEFAULT_PARTITION,
        "db_port": db_port,
        "dbd_port": dbd_port,
        "ctld_port": ctld_port,
        "slurmd_port": slurmd_port,
    }
    for name in ("slurm.conf", "slurmdbd.conf"):
        (root / name).write_text(Template((TEMPLATES / name).read_text()).substitute(values))
    (root / "slurmdbd.conf").chmod(0o600)  # slurmdbd refuses a readable file holding a password

    sock = root / "run" / "munge.sock"
    setup("mungekey", "--create", "--keyfile", str(root / "munge" / "munge.key"), env=env)
    # --force: munged's checks of who may reach its folders are for shared hosts; a test's temp folder fails them
    munged = c.start(
        "munged",
        "munged",
        "--foreground",
        "--force",
        f"--socket={sock}",
        f"--key-file={root}/munge/munge.key",
        f"--pid-file={root}/run/munged.pid",
        f"--log-file={root}/log/munged.log",
        f"--seed-file={root}/munge/seed",
    )
    c.wait("munged", sock.exists, munged)

    setup(
        "mariadb-install-db",
        "--no-defaults",
        f"--datadir={root}/db",
        "--user=root",
        "--auth-root-authentication-method=normal",
        "--skip-test-db",
        env=env,
    )
    mariadb = c.start(
        "mariadbd",
        "mariadbd",
        "--no-defaults",
        f"--datadir={root}/db",
        "--user=root",
        "--bind-address=127.0.0.1",
        f"--port={db_port}",
        f"--socket={root}/run/mariadb.sock",
        f"--pid-file={root}/run/mariadb.pid",
        f"--init-file={TEMPLATES}/mariadb-init.sql",
        "--skip-name-resolve",
        "--innodb-buffer-pool-size=256M",
        "--innodb-lock-wait-timeout=900",
    )
    c.wait("MariaDB", lambda: listening(db_port), mariadb)

    dbd = c.start("slurmdbd", "slurmdbd", "-D")
    c.wait("slurmdbd", lambda: listening(dbd_port), dbd)
    DEFAULT_CONF.parent.mkdir(parents=True, exist_ok=True)
    DEFAULT_CONF.symlink_to(root / "slurm.conf")
    ctld = c.start("slurmctld", "slurmctld", "-D", "-i")
    c.wait("slurmctld", lambda: "UP" in c.run("scontrol", "ping", check=False), ctld)
    slurmd = c.start("slurmd", "slurmd", "-D", "-N", host)
    c.wait("slurmd", lambda: set(c.run("sinfo", "-h", "-o", "%T", check=False).split()) == {"idle"}, slurmd)
    c.version = c.run("sinfo", "--version").strip()
