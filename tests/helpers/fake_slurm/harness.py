"""A fake SLURM allocation on one machine, for running ``slurm/search.sbatch`` end to end.

Each fake node is a network namespace with its own address on a private bridge (in a hub
namespace of its own; nothing is connected to the host's network), and every task srun starts
on it also gets its own PID, UTS and mount namespace (a private /tmp/ray), so several
``ray start`` processes behave as on separate machines. Needs root (``ip netns``, ``unshare``).
The SLURM controller is the one part that cannot exist here: ``srun``/``scontrol`` are small
stand-ins next to this file, and the batch script runs "on" the first node with the usual
SLURM_* variables.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from pathlib import Path

HERE = Path(__file__).resolve().parent


def available() -> str | None:
    """None when fake allocations can be made here, else why not."""
    if os.geteuid() != 0:
        return "needs root for network namespaces"
    for tool in ("ip", "unshare"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    probe = f"evfkprobe{os.getpid()}"
    if subprocess.run(["ip", "netns", "add", probe], capture_output=True).returncode != 0:
        return "cannot create network namespaces"
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    return None


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


class FakeAllocation:
    def __init__(self, root: Path, n_nodes: int = 2, cpus_per_node: int = 1) -> None:
        self.root, self.n, self.cpus = Path(root), n_nodes, cpus_per_node
        tag = f"evfk{os.getpid() % 100000}"
        self.hub = f"{tag}hub"
        self.nodes = [(f"node{i}", f"{tag}n{i}", f"10.251.0.{i + 1}") for i in range(n_nodes)]

    def __enter__(self) -> FakeAllocation:
        self.root.mkdir(parents=True, exist_ok=True)
        _ip("netns", "add", self.hub)
        _ip("-n", self.hub, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.hub, "link", "set", "br0", "up")
        for i, (_name, ns, addr) in enumerate(self.nodes):
            _ip("netns", "add", ns)
            _ip(
                "-n",
                self.hub,
                "link",
                "add",
                f"p{i}",
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                ns,
            )
            _ip("-n", self.hub, "link", "set", f"p{i}", "master", "br0", "up")
            _ip("-n", ns, "addr", "add", f"{addr}/24", "dev", "eth0")
            _ip("-n", ns, "link", "set", "eth0", "up")
            _ip("-n", ns, "link", "set", "lo", "up")
        (self.root / "nodes").write_text("".join(f"{n} {ns} {a}\n" for n, ns, a in self.nodes))
        return self

    def __exit__(self, *exc: object) -> None:
        for _name, ns, _addr in self.nodes:
            self.kill_node(ns)
        for _name, ns, _addr in self.nodes:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "netns", "del", self.hub], capture_output=True)

    def kill_node(self, ns: str) -> None:
        """SIGKILL every process left in a fake node (only processes this test started)."""
        out = subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout
        for pid in out.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except (ProcessLookupError, ValueError):
                pass

    def end_job(self) -> None:
        """The batch job ended: kill what it left on its nodes, as slurmd does with a job's cgroup.

        Without this, raylets of a pre-empted job that are still shutting down (slow under load)
        reconnect to the requeued job's new head with the old job's token and crash it."""
        for _name, ns, _addr in self.nodes:
            self.kill_node(ns)

    def env(self, restart_count: int = 0, extra: dict[str, str] | None = None) -> dict[str, str]:
        env = dict(os.environ)
        # `ray start --address` refuses to join a cluster when this is 0; the fake nodes have no
        # interface but loopback and the private bridge, so nothing can leave this machine.
        env.pop("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", None)
        env.update(
            {
                "PATH": f"{HERE}:{env['PATH']}",
                "FAKE_SLURM_ROOT": str(self.root),
                "SLURM_JOB_ID": "4242",
                "SLURM_JOB_NAME": "evomerge",
                "SLURM_JOB_NODELIST": f"node[0-{self.n - 1}]",
                "SLURM_JOB_NUM_NODES": str(self.n),
                "SLURM_NNODES": str(self.n),
                "SLURM_CPUS_PER_TASK": str(self.cpus),
                "SLURM_RESTART_COUNT": str(restart_count),
                "SLURM_SUBMIT_DIR": os.getcwd(),
            }
        )
        env.update(extra or {})
        return env

    def start_batch(
        self,
        script: Path,
        args: list[str],
        *,
        restart_count: int = 0,
        extra_env: dict[str, str] | None = None,
        log: Path | None = None,
    ) -> subprocess.Popen:
        """Start the batch script on node0, as sbatch would (output to ``log``)."""
        out = open(log or self.root / "batch.out", "ab")  # noqa: SIM115 - closed with the process
        return subprocess.Popen(
            [str(HERE / "enter"), "node0", "bash", str(script), *args],
            env={**self.env(restart_count, extra_env), "FAKE_SLURM_BATCH": "1"},
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def requeued(self) -> list[str]:
        p = self.root / "requeued"
        return p.read_text().split() if p.exists() else []
