"""Shared fixtures. One Ray session per pytest run: `ray.init` costs seconds here."""

from __future__ import annotations

import os

import pytest

from launch.cluster import JOB_ENV

# As `launch.cluster.connect` does: the fast report poll and the short process-group teardown,
# set before Ray starts (the controller inherits them).
for _key, _value in JOB_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray cluster shared by every test that needs one (started on first use).

    Four logical CPUs on a 2-core machine: Train workers, the solver actor and a Tune trial
    driver must all fit at once. The custom `trial_driver` resource lets Tune trial drivers
    run without holding a CPU (launch/tune.py's TRIAL_DRIVER), so the Train workers of a
    trial can use every CPU.
    """
    import ray

    if not ray.is_initialized():
        ray.init(
            num_cpus=4,
            resources={"trial_driver": 100},
            include_dashboard=True,
            dashboard_host="127.0.0.1",
            namespace="cascadevae-tests",
            log_to_driver=False,
        )
    yield ray
    ray.shutdown()


@pytest.fixture
def no_ray(monkeypatch):
    """A launch command under test must stop before Ray: reaching `launch.cluster.connect`
    fails the test instead of starting a cluster (and the run the command was given)."""
    import launch.cluster

    def refuse(**_):
        raise AssertionError("launch.cluster.connect was called: the command reached Ray")

    monkeypatch.setattr(launch.cluster, "connect", refuse)
