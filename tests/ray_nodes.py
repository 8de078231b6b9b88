"""Ray nodes started by tests as `ray start` processes, each in a process group of its own.

Every node (`ray start --head` or a node that joins it) is started with `start_new_session`,
so every process it starts (GCS, raylet, dashboard, agents, the workers of jobs) is in its
process group; a node is stopped by signalling that group, never with `ray stop` (which would
also stop the clusters of other tests and other users of the machine). Ports are chosen here,
explicitly, for every listening service of a node.
"""

from __future__ import annotations

import datetime
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

RAY = Path(sys.executable).parent / "ray"
START_TIMEOUT_S = 180.0
REGISTER_TIMEOUT_S = 180.0
STATE_TIMEOUT_S = 120.0


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def group_members(pgid: int) -> list[int]:
    """Pids of the live processes in process group `pgid` (zombies excluded)."""
    members = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            fields = (proc / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            members.append(int(proc.name))
    return members


def stop_group(pgid: int, patience_s: float = 1.0) -> list[int]:
    """SIGTERM the process group, SIGKILL what is left after `patience_s`; returns the pids
    still alive after that (none expected). A Ray node's GCS, raylet and dashboard take more
    than 10 s to exit on SIGTERM (each waits on the others); no test checks how a node stops,
    so they get a second."""
    for sig, wait_s in ((signal.SIGTERM, patience_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return []
        deadline = time.monotonic() + wait_s
        while group_members(pgid) and time.monotonic() < deadline:
            time.sleep(0.1)
    return group_members(pgid)


def _process_name(pid: int) -> str:
    try:
        return (Path("/proc") / str(pid) / "comm").read_text().strip()
    except OSError:
        return ""


@dataclass
class Node:
    """One `ray start` process group: `name` is also the custom resource it carries."""

    name: str
    pgid: int
    head: bool

    def raylet_pid(self) -> int:
        pids = [p for p in group_members(self.pgid) if _process_name(p) == "raylet"]
        assert len(pids) == 1, f"node {self.name}: raylet processes {pids}"
        return pids[0]

    def raylet_node_id(self) -> str | None:
        """The node id the raylet of this node was started with (None: no raylet runs)."""
        pids = [p for p in group_members(self.pgid) if _process_name(p) == "raylet"]
        for pid in pids:
            try:
                args = (Path("/proc") / str(pid) / "cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            for arg in args:
                if arg.startswith(b"--node_id="):
                    return arg.split(b"=", 1)[1].decode()
        return None


@dataclass
class LocalCluster:
    """A head and further nodes on this machine, each a separate `ray start` with its own
    ports, temp folder, data cache folder and a custom resource naming it (`node_<name>`).

    Token authentication is on, with a token file of this cluster's own (`env` carries it to
    every client, such as `ray job submit`). `extra_env` (for example Ray's health-check
    timing) is given to every node.
    """

    root: Path
    extra_env: dict[str, str] = field(default_factory=dict)
    nodes: dict[str, Node] = field(default_factory=dict)
    replaced: list[Node] = field(default_factory=list)
    gcs_port: int = 0
    dashboard_port: int = 0

    def __post_init__(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        # Ray's socket paths live under its temp folder and must stay under 108 bytes. Each
        # node gets a folder of its own: nodes sharing one would also share the folder where
        # each unpacks a job's working_dir, and one node's unpacking removes files another's
        # processes are importing.
        self.ray_temp = Path(tempfile.mkdtemp(prefix="raynodes-", dir="/tmp"))
        token = self.root / "auth_token"
        token.write_text(secrets.token_hex(32))
        other_cluster = ("RAY_ADDRESS", "RAY_API_SERVER_ADDRESS", "RAY_AUTH_TOKEN")
        env = {k: v for k, v in os.environ.items() if k not in other_cluster}
        env.update(
            {
                "RAY_AUTH_MODE": "token",
                "RAY_AUTH_TOKEN_PATH": str(token),
                "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_DEDUP_LOGS": "0",
            }
        )
        env.update(self.extra_env)
        self.env = env

    @property
    def gcs_address(self) -> str:
        return f"127.0.0.1:{self.gcs_port}"

    @property
    def dashboard_url(self) -> str:
        return f"http://127.0.0.1:{self.dashboard_port}"

    def cache_dir(self, name: str) -> Path:
        return self.root / f"cache-{name}"

    def start_head(self, cpus: float, resources: dict[str, float] | None = None) -> Node:
        def command() -> list[str]:
            self.gcs_port, self.dashboard_port, client = free_ports(3)
            return [
                "--head", f"--port={self.gcs_port}", "--dashboard-host=127.0.0.1",
                f"--dashboard-port={self.dashboard_port}", f"--ray-client-server-port={client}",
            ]  # fmt: skip

        return self._start("head", cpus, resources, command, head=True)

    def add_node(self, name: str, cpus: float) -> Node:
        assert self.gcs_port, "start the head first"
        return self._start(name, cpus, None, lambda: [f"--address={self.gcs_address}"])

    def _start(self, name, cpus, resources, role_args, head: bool = False) -> Node:
        """`ray start` for one node. `ray start` gives the raylet 30 s to register with the
        GCS (a constant in Ray 2.60) and exits 1 after that, leaving the node's processes
        running; when its raylet is still running the node is accepted once the State API
        lists the raylet's node id ALIVE (within REGISTER_TIMEOUT_S). A start that fails
        otherwise (a port taken between the probe and the bind, a raylet that exited) is
        stopped and retried on new ports, twice; a third failure raises with every output
        and the end of the raylet's log."""
        outputs = []
        for _ in range(3):
            agent, agent_grpc, manager, objects, runtime_env, metrics, low = free_ports(7)
            command = [
                str(RAY), "start", *role_args(), "--node-ip-address=127.0.0.1",
                f"--node-manager-port={manager}", f"--object-manager-port={objects}",
                f"--dashboard-agent-listen-port={agent}",
                f"--dashboard-agent-grpc-port={agent_grpc}",
                f"--runtime-env-agent-port={runtime_env}", f"--metrics-export-port={metrics}",
                f"--num-cpus={cpus:g}", "--object-store-memory=100000000",
                "--resources=" + json.dumps({f"node_{name}": 1, **(resources or {})}),
                "--disable-usage-stats", f"--temp-dir={self.ray_temp / name}",
            ]  # fmt: skip
            env = {**self.env, "CASCADEVAE_CACHE": str(self.cache_dir(name))}
            started = subprocess.Popen(
                command,
                env=env,
                start_new_session=True,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            output, _ = started.communicate(timeout=START_TIMEOUT_S)
            node = Node(name, started.pid, head)
            if started.returncode == 0 or self._registers_late(node):
                if name in self.nodes:  # a replacement: the lost node's group is stopped last
                    self.replaced.append(self.nodes[name])
                self.nodes[name] = node
                self.wait_for_node(name)
                return node
            outputs.append(
                f"{command}\nexit {started.returncode}:\n{output[-3000:]}\n"
                f"raylet log:\n{self._raylet_log_tail(name)}"
            )
            assert not stop_group(started.pid), f"a failed start of {name} left processes"
        raise RuntimeError(f"ray start for node {name} failed 3 times:\n" + "\n".join(outputs))

    def _raylet_log_tail(self, name: str, chars: int = 1500) -> str:
        """The fatal lines and the end of the newest raylet log of node `name` (why a start
        failed)."""
        logs = sorted(
            (self.ray_temp / name).glob("session_*/logs/raylet*.out"),
            key=lambda p: p.stat().st_mtime,
        )
        if not logs:
            return "(none)"
        text = logs[-1].read_text(errors="replace")
        fatal = [line for line in text.splitlines() if " F " in line or "Check failed" in line]
        return "\n".join(fatal[-5:]) + "\n...\n" + text[-chars:]

    def _registers_late(self, node: Node) -> bool:
        """Whether the raylet of a node whose `ray start` failed is running and registers with
        the GCS within REGISTER_TIMEOUT_S (the State API lists its node id ALIVE)."""
        node_id = node.raylet_node_id()
        if node_id is None or not self.dashboard_port:
            return False
        deadline = time.monotonic() + REGISTER_TIMEOUT_S
        while time.monotonic() < deadline:
            try:
                listed = self.state("nodes", f"node_id={node_id}")
            except AssertionError:  # the head's dashboard never answered
                return False
            if any(n["state"] == "ALIVE" for n in listed):
                return True
            if node.raylet_node_id() is None:  # the raylet exited
                return False
            time.sleep(1.0)
        return False

    def state(self, kind: str, *filters: str) -> list[dict]:
        """`ray list <kind> --detail` of this cluster through the State API, as records. A
        query that fails (the dashboard still starting, a GCS too loaded to answer in time)
        is repeated for up to STATE_TIMEOUT_S; then the last output is the error."""
        command = [
            str(RAY), "list", kind, "--detail", "--format=json", "--limit=10000",
            f"--address={self.dashboard_url}", *(f"--filter={f}" for f in filters),
        ]  # fmt: skip
        deadline = time.monotonic() + STATE_TIMEOUT_S
        while True:
            try:
                done = subprocess.run(
                    command, env=self.env, capture_output=True, text=True, timeout=120
                )
            except subprocess.TimeoutExpired as err:
                output = f"no answer in {err.timeout} s"
            else:
                output = done.stdout[-2000:] + done.stderr[-2000:]
                if done.returncode == 0:
                    return json.loads(done.stdout)
            assert time.monotonic() < deadline, f"ray list {kind} {filters}: {output}"
            time.sleep(1.0)

    def node_names(self) -> dict[str, str]:
        """Node id -> node name (from the custom resource `node_<name>` each node carries)."""
        names = {}
        for node in self.state("nodes"):
            own = [k[len("node_") :] for k in node["resources_total"] if k.startswith("node_")]
            names[node["node_id"]] = own[0] if own else "?"
        return names

    def wait_for_node(self, name: str, alive: bool = True, timeout_s: float = 120.0) -> float:
        """Wait until the State API lists node `name` as ALIVE (or, `alive=False`, as DEAD);
        returns the monotonic time it was seen so."""
        want = "ALIVE" if alive else "DEAD"
        deadline = time.monotonic() + timeout_s
        while True:
            states = [
                n["state"] for n in self.state("nodes") if f"node_{name}" in n["resources_total"]
            ]
            if want in states:
                return time.monotonic()
            assert time.monotonic() < deadline, f"node {name} not {want} after {timeout_s} s"
            time.sleep(0.2)

    def death_time(self, name: str) -> float:
        """Wall-clock time at which the GCS marked node `name` dead (from the State API)."""
        [node] = [
            n for n in self.state("nodes", "state=DEAD") if f"node_{name}" in n["resources_total"]
        ]
        end = node["end_time_ms"]  # the CLI prints it as local time, "YYYY-MM-DD HH:MM:SS.f"
        if isinstance(end, str):
            return datetime.datetime.fromisoformat(end).timestamp()
        return end / 1000.0

    def kill_node(self, name: str) -> float:
        """SIGKILL the raylet of node `name` (the node is lost with all its workers); returns
        the wall-clock time of the kill."""
        pid = self.nodes[name].raylet_pid()
        killed_at = time.time()
        os.kill(pid, signal.SIGKILL)
        return killed_at

    def stop(self) -> list[int]:
        """Stop every node, the head last; returns pids left running (none expected)."""
        left: list[int] = []
        for node in [*self.replaced, *sorted(self.nodes.values(), key=lambda n: n.head)]:
            left += stop_group(node.pgid)
        self.nodes.clear()
        self.replaced.clear()
        if not left:
            shutil.rmtree(self.ray_temp, ignore_errors=True)
        return left
