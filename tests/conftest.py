"""Shared fixtures. One Ray session per pytest run: `ray.init` costs seconds here.

Every process a test starts is ended by a fixture's finalizer (`spawn`, and
`tests/ray_nodes.py`'s `LocalCluster` for Ray nodes), so a test that fails or times out leaves
nothing running to starve the tests after it.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from dsprites_grid import SMALL
from ray_nodes import stop_group

from launch.cluster import API_SERVER_VAR, JOB_ENV, LOCAL_HOST, cluster_env, free_port

# As `launch.cluster.connect` does: the fast report poll and the short process-group teardown,
# set before Ray starts (the controller inherits them).
for _key, _value in JOB_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
# Ray Train starts a preemption watcher (an actor polling the nodes for a drain notice) with
# every worker group. No node of these tests is ever drained, and each watcher is one more
# process to start: about 1.3 s of CPU per group start on this 2-core machine.
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
# Metrics for Ray's dashboard and Prometheus, which no test reads: every Ray process exports
# them to its node's metrics agent, and Ray Train adds run metrics from its controller and
# workers.
os.environ.setdefault("RAY_enable_metrics_collection", "0")
os.environ.setdefault("RAY_TRAIN_METRICS_ENABLED", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
# Ray starts its worker processes at nice 15. Under `make test` the Ray tests, one after the
# other, are the suite's critical path: their workers keep the tests' priority, and the xdist
# workers that run the other modules lower theirs (`pytest_runtest_setup` below).
os.environ.setdefault("RAY_worker_niceness", "0")
OTHER_MODULES_NICENESS = 19


NO_RAY_VAR = "CASCADEVAE_TEST_NO_RAY"
"""Set to 1 (`make test-fast` does): starting a Ray node in this process fails the test."""
RAY_FIXTURES = ("ray_session", "fit_debug", "two_workers_run")
"""Fixtures that start (or need) the session's Ray cluster."""


_priority_set = False


def pytest_runtest_setup(item):
    """An xdist worker whose first test is not in RAY_MODULES runs no Ray test (the Ray
    modules are one scope, first in the queue): it lowers its priority, so that the Ray tests'
    processes get the CPU first and these tests use what they leave idle."""
    global _priority_set
    if _priority_set or not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    _priority_set = True
    if item.path.name not in RAY_MODULES:
        os.nice(OTHER_MODULES_NICENESS)


def pytest_configure(config):
    """In a pytest-xdist worker, torch gets this worker's share of the CPUs as threads: two
    workers with a thread per core each would put twice as many busy threads as cores.

    With NO_RAY_VAR=1, a test that starts or joins a Ray cluster in this process fails with
    an error naming the variable (a test that starts Ray must be marked slow)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "0"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, (os.cpu_count() or 1) // workers))
    if os.environ.get(NO_RAY_VAR) != "1":
        return
    import ray._private.node

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"a Ray node was started with {NO_RAY_VAR}=1 (make test-fast): a test that starts "
            "Ray must be marked @pytest.mark.slow"
        )

    ray._private.node.Node.__init__ = refuse


RAY_MODULES = frozenset(
    {
        "test_factorvae_e2e.py",
        "test_gpu.py",
        "test_multinode.py",
        "test_real_faults.py",
        "test_run_folder_e2e.py",
        "test_solver_actor.py",
        "test_study.py",
        "test_train_e2e.py",
        "test_tune.py",
    }
)
"""The modules with slow (Ray) tests: under `--dist loadscope` (`make test`) they are one scope,
run in order by one worker on one Ray cluster, while the other workers run the other modules.
A module with a slow test that is not listed is a collection error."""
RAY_SCOPE = "ray"


def pytest_xdist_make_scheduler(config, log):
    """`--dist loadscope` (`make test`): the scopes are RAY_MODULES together, then every other
    module on its own. Ray tests at once on 2 cores compete for the CPU they are bound by (two
    at once each take about twice as long), while the tests without Ray use the CPU the Ray
    tests leave idle. (pytest-xdist's own `xdist_group` marks are not honoured with pytest 9.2:
    pytest-dev/pytest-xdist#1386.)"""
    if config.getvalue("dist") != "loadscope":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class RayModulesTogether(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            module = nodeid.split("::", 1)[0]
            return RAY_SCOPE if Path(module).name in RAY_MODULES else module

    return RayModulesTogether(config, log)


def pytest_collection_modifyitems(config, items):
    """A test that uses a Ray fixture must be marked slow, so that `make test-fast` (-m "not
    slow") starts no Ray: one that is not is a collection error naming it.

    The modules with the most slow tests run first (a stable sort, so each module's tests stay
    together and in order): under `--dist loadscope --no-loadscope-reorder` (`make test`) the
    scope of the Ray modules is then first in the queue and starts at once."""
    slow_per_module: dict[Path, int] = {}
    for item in items:
        count = int(item.get_closest_marker("slow") is not None)
        slow_per_module[item.path] = slow_per_module.get(item.path, 0) + count
    items.sort(key=lambda item: -slow_per_module[item.path])
    unlisted = {
        item.path.name
        for item in items
        if item.get_closest_marker("slow") is not None and item.path.name not in RAY_MODULES
    }
    if unlisted:
        raise pytest.UsageError(
            "modules with slow tests must be listed in tests/conftest.py RAY_MODULES: "
            + ", ".join(sorted(unlisted))
        )
    unmarked = [
        item.nodeid
        for item in items
        if set(RAY_FIXTURES) & set(getattr(item, "fixturenames", ()))
        and item.get_closest_marker("slow") is None
    ]
    if unmarked:
        raise pytest.UsageError(
            "tests that use a Ray fixture (" + ", ".join(RAY_FIXTURES) + ") must be marked "
            "@pytest.mark.slow: " + ", ".join(unmarked)
        )


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by every test that needs one (started on first use).

    Four logical CPUs on a 2-core machine: Train workers, the solver actor and a Tune trial
    driver must all fit at once. The custom `trial_driver` resource lets Tune trial drivers
    run without holding a CPU (launch/tune.py's TRIAL_DRIVER), so the Train workers of a
    trial can use every CPU.

    As `launch.cluster.connect` does, every process of the cluster is given its dashboard's
    address (RAY_API_SERVER_ADDRESS), so that Ray's placement-group cleaner and State API
    calls inside Train and Tune never look for "the" local Ray instance, which fails while
    another one is up on the machine ("Found multiple active Ray instances").
    """
    import ray

    saved = os.environ.get(API_SERVER_VAR)
    if not ray.is_initialized():
        dashboard_port = free_port()
        env = cluster_env(dashboard_url=f"http://{LOCAL_HOST}:{dashboard_port}")
        os.environ.update(env)
        ray.init(
            num_cpus=4,
            resources={"trial_driver": 100},
            include_dashboard=True,
            dashboard_host=LOCAL_HOST,
            dashboard_port=dashboard_port,
            namespace="cascadevae-tests",
            log_to_driver=False,
            runtime_env={"env_vars": env},
        )
    yield ray
    ray.shutdown()
    if saved is None:
        os.environ.pop(API_SERVER_VAR, None)
    else:
        os.environ[API_SERVER_VAR] = saved


@pytest.fixture
def no_ray(monkeypatch):
    """A launch command under test must stop before Ray: reaching `launch.cluster.connect`
    fails the test instead of starting a cluster (and the run the command was given)."""
    import launch.cluster

    def refuse(**_):
        raise AssertionError("launch.cluster.connect was called: the command reached Ray")

    monkeypatch.setattr(launch.cluster, "connect", refuse)


DEBUG_CONFIG = Path(__file__).parent.parent / "configs" / "debug.yaml"


def _fit_debug(root: Path, name: str, overrides: list[str]):
    from trainer.config import load_config
    from trainer.distributed.worker import fit

    config = load_config(DEBUG_CONFIG, [f"train.run_name={name}", *overrides])
    result = fit(config, storage_path=str(root))
    assert result.error is None, result.error
    return config, result, root / name


@pytest.fixture(scope="session")
def fit_debug(ray_session):
    """`fit_debug(root, name, overrides)` trains the debug config (run folder `root/name`) on
    the session cluster; returns (config, Train result, run folder) and fails the test when
    the run failed."""
    return _fit_debug


@pytest.fixture(scope="session")
def two_workers_run(fit_debug, tmp_path_factory):
    """The debug config with 2 workers, unary shards and codes recorded: shared by the
    end-to-end tests and, as the run without a fault, by the real-fault tests."""
    return fit_debug(
        tmp_path_factory.mktemp("two_workers"),
        "two_workers",
        ["train.num_workers=2", "train.record_codes_steps=5"],
    )


# --------------------------------------------------------------------------- processes
RAY = Path(sys.executable).parent / "ray"


@pytest.fixture
def spawn():
    """`spawn(command, **popen_kwargs)` starts a process in a session of its own (so every
    process it starts is in its group); the finalizer stops each group that is still alive,
    whether the test passed, failed or timed out."""
    started: list[subprocess.Popen] = []

    def start(command: list[str], **kwargs) -> subprocess.Popen:
        process = subprocess.Popen(command, start_new_session=True, **kwargs)
        started.append(process)
        return process

    yield start
    for process in started:
        stop_group(process.pid)
        if process.poll() is None:
            process.kill()
        process.wait(timeout=30)


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """The small rendered dSprites grid of the data tests (tests/dsprites_grid.py), built once
    per test module in a temporary cache."""
    from trainer.data.dsprites import open_dsprites

    return open_dsprites(**SMALL, cache_dir=tmp_path_factory.mktemp("cache"))
