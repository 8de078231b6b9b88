"""Connect to Ray: the cluster at RAY_ADDRESS (as under `ray job submit`), else a local one."""

from __future__ import annotations

import os

# Train V2 paces `ray.train.report` by the controller's poll interval (2 s by default, about
# 1.7 s per report measured here); a short poll keeps reporting cheap. Set before Ray starts so
# that a local cluster's processes inherit it.
FAST_POLL = {"RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1"}


def connect(*, num_cpus: float | None = None, resources: dict[str, float] | None = None) -> str:
    """Start or join Ray; returns "cluster <address>" or "local". Idempotent."""
    for key, value in FAST_POLL.items():
        os.environ.setdefault(key, value)
    import ray

    if ray.is_initialized():
        return "existing"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a job the namespace is random: the solver actor passes its namespace explicitly.
        ray.init(address=address, runtime_env={"env_vars": FAST_POLL})
        return f"cluster {address}"
    ray.init(
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=True,
        dashboard_host="127.0.0.1",
        log_to_driver=True,
    )
    return "local"


def check_resources(cpus_needed: float, gpus_needed: float, what: str) -> None:
    """Fail fast with a clear message when the cluster can never hold the run."""
    import ray

    total = ray.cluster_resources()
    problems = []
    if cpus_needed > total.get("CPU", 0):
        problems.append(f"{cpus_needed:g} CPUs needed, the cluster has {total.get('CPU', 0):g}")
    if gpus_needed > total.get("GPU", 0):
        problems.append(f"{gpus_needed:g} GPUs needed, the cluster has {total.get('GPU', 0):g}")
    if problems:
        raise SystemExit(
            f"{what}: {'; '.join(problems)}. Lower train.num_workers / train.cpus_per_worker or "
            "set train.use_gpu=false."
        )
