"""The nodes of the cluster: which one is the head, and whether every node sees the run storage.

A run's folder must be one folder for every node (a shared file system such as NFS, or the
same local disk when all nodes are on one machine): rank 0 writes checkpoints there from
whatever node it lands on, and Ray Train reads them back on restart from another one.
`storage_problems` checks that before a run starts: the driver writes a probe file with a
random token, one zero-CPU task pinned to each live node reads it back and writes a probe file
of its own, and the driver reads those.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

HEAD_RESOURCE = "node:__internal_head__"
"""The resource Ray gives the head node only."""
PROBE_PREFIX = ".storage-probe-"
PROBE_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class NodeReport:
    """What one node found: `error` is None when it read the driver's token and wrote its own
    probe; `label` names the node in messages (address, custom resources, id)."""

    node_id: str
    label: str
    error: str | None


def node_label(node: dict) -> str:
    """`<ip> [<custom resources>] (id <first 8 hex>)` of a `ray.nodes()` entry."""
    own = sorted(
        k
        for k in node.get("Resources", {})
        if k not in ("CPU", "GPU", "memory", "object_store_memory", HEAD_RESOURCE)
        and not k.startswith(("node:", "accelerator_type:"))
    )
    head = " head" if HEAD_RESOURCE in node.get("Resources", {}) else ""
    extra = f" [{', '.join(own)}]" if own else ""
    return f"{node.get('NodeManagerAddress', '?')}{head}{extra} (id {node['NodeID'][:8]})"


def alive_nodes() -> list[dict]:
    import ray

    return [n for n in ray.nodes() if n.get("Alive")]


def head_node_id() -> str | None:
    """The id of the live head node (None when the cluster reports no head)."""
    for node in alive_nodes():
        if HEAD_RESOURCE in node.get("Resources", {}):
            return str(node["NodeID"])
    return None


def storage_message(
    storage: Path, reports: list[NodeReport], field: str = "train.storage_path"
) -> str | None:
    """The error naming every node that cannot use `storage`, the folder of config `field`
    (None when all can)."""
    failing = [r for r in reports if r.error is not None]
    if not failing:
        return None
    lines = "\n".join(f"  - {r.label}: {r.error}" for r in failing)
    return (
        f"{field}: {storage} is not the same folder on every node of the cluster "
        f"({len(failing)} of {len(reports)} node(s) cannot use it):\n{lines}\n"
        "Put storage_path on a file system every node mounts at the same path (NFS, a "
        "shared disk)."
    )


def _probe_on_node(folder: str, token_name: str, token: str) -> str | None:
    """Run on one node: read the driver's token, write and read this node's probe file.
    Returns None, or what went wrong."""
    import ray

    node_id = ray.get_runtime_context().get_node_id()
    try:
        seen = (Path(folder) / token_name).read_text()
    except OSError as err:
        return f"cannot read the driver's probe file ({type(err).__name__}: {err})"
    if seen != token:
        return "reads a different folder (the driver's probe file holds another token)"
    own = Path(folder) / f"{token_name}.{node_id}"
    try:
        own.write_text(node_id)
        if own.read_text() != node_id:
            return f"wrote {own} but read back something else"
    except OSError as err:
        return f"cannot write {own} ({type(err).__name__}: {err})"
    return None


def probe_storage(storage: Path, timeout_s: float = PROBE_TIMEOUT_S) -> list[NodeReport]:
    """One report per live node on whether it shares `storage` (a local folder) with the
    driver. The probe files are removed afterwards."""
    import ray
    from ray.exceptions import GetTimeoutError
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    storage.mkdir(parents=True, exist_ok=True)
    token = secrets.token_hex(8)
    token_name = f"{PROBE_PREFIX}{token}-{os.getpid()}"
    driver_file = storage / token_name
    driver_file.write_text(token)
    probe = ray.remote(num_cpus=0, max_retries=0)(_probe_on_node)
    nodes = alive_nodes()
    refs = [
        probe.options(
            scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)
        ).remote(str(storage), token_name, token)
        for n in nodes
    ]
    reports = []
    try:
        for node, ref in zip(nodes, refs, strict=True):
            node_id = str(node["NodeID"])
            try:
                error = ray.get(ref, timeout=timeout_s)
            except GetTimeoutError:
                error = f"no answer from the probe within {timeout_s:g} s"
            except Exception as err:  # the node died or the task failed there
                error = f"the probe failed ({type(err).__name__}: {str(err)[:200]})"
            if error is None:
                own = storage / f"{token_name}.{node_id}"
                if not own.is_file() or own.read_text() != node_id:
                    error = f"wrote its probe file where the driver cannot see it ({own})"
            reports.append(NodeReport(node_id, node_label(node), error))
    finally:
        for path in storage.glob(f"{token_name}*"):
            path.unlink(missing_ok=True)
    return reports


def strict_spread_problem(
    nodes: list[dict], num_workers: int, cpus_per_worker: float
) -> str | None:
    """With train.placement_strategy=STRICT_SPREAD each worker needs a node of its own: the
    message when fewer live `nodes` (`ray.nodes()` entries) have `cpus_per_worker` CPUs."""
    fitting = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) >= cpus_per_worker]
    if len(fitting) >= num_workers:
        return None
    return (
        f"train.placement_strategy: STRICT_SPREAD puts each of the {num_workers} workers on a "
        f"node of its own, and {len(fitting)} of the cluster's {len(nodes)} live node(s) have "
        f"{cpus_per_worker:g} CPU(s) for one; add nodes or use SPREAD or PACK"
    )
