"""Connect to Ray: the cluster at RAY_ADDRESS (as under `ray job submit`), else a local one.

Either way the cluster's address is handed to every process of the job (`cluster_env`): Ray
Train's placement-group cleaner queries the State API, which without an address looks for the
machine's Ray instances and fails when there are several ("Found multiple active Ray
instances"), for example while another local run or a `ray start` head is up.
"""

from __future__ import annotations

import os
import socket

JOB_ENV = {
    # Train V2 paces `ray.train.report` by the controller's poll interval (2 s by default,
    # about 1.7 s per report on a 2-core CPU machine); a short poll keeps reporting cheap.
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.1",
    # When a worker group restarts, the controller waits this long for every worker to tear
    # down its torch process group (30 s by default); a stopped or frozen worker never does,
    # so the default adds 30 s to every recovery from one. A healthy worker takes milliseconds.
    "TORCH_PROCESS_GROUP_SHUTDOWN_TIMEOUT_S": "5",
}
"""Read by Ray Train's controller: set (unless already set) in this process and in the job's
runtime environment; a local cluster's processes inherit them when they start."""
API_SERVER_VAR = "RAY_API_SERVER_ADDRESS"
"""Where Ray's State API and job clients find the dashboard (ahead of RAY_ADDRESS)."""
LOCAL_HOST = "127.0.0.1"


def cluster_env(*, address: str | None = None, dashboard_url: str | None = None) -> dict[str, str]:
    """Environment variables for every process of the job: JOB_ENV (this process's values
    where set) and the cluster's address (its bootstrap address, or a local cluster's
    dashboard URL)."""
    env = {key: os.environ.get(key, value) for key, value in JOB_ENV.items()}
    if address:
        env["RAY_ADDRESS"] = address
    if dashboard_url:
        env[API_SERVER_VAR] = dashboard_url
    return env


def free_port(host: str = LOCAL_HOST) -> int:
    """A TCP port free on `host` now (the OS picks it)."""
    with socket.socket() as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def connect(*, num_cpus: int | None = None, resources: dict[str, float] | None = None) -> str:
    """Start or join Ray; returns "cluster <address>", "local <dashboard URL>" or "existing".
    Idempotent."""
    import ray

    if ray.is_initialized():
        return "existing"
    address = os.environ.get("RAY_ADDRESS")
    if address:
        # Inside a job the namespace is random: the solver actor passes its namespace explicitly.
        env = cluster_env(address=address)
        os.environ.update(env)
        ray.init(address=address, runtime_env={"env_vars": env})
        return f"cluster {address}"
    # The dashboard port is chosen here, so that its URL can be given to the cluster's processes
    # when they start: a local cluster's processes inherit this process's environment.
    dashboard_port = free_port()
    env = cluster_env(dashboard_url=f"http://{LOCAL_HOST}:{dashboard_port}")
    os.environ.update(env)
    ray.init(
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=True,
        dashboard_host=LOCAL_HOST,
        dashboard_port=dashboard_port,
        runtime_env={"env_vars": env},
        log_to_driver=True,
    )
    return f"local {env[API_SERVER_VAR]}"


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
