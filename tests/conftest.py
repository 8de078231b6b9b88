"""Shared fixtures. One Ray session per pytest run: `ray.init` costs seconds here."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from launch.cluster import JOB_ENV

# As `launch.cluster.connect` does: the fast report poll and the short process-group teardown,
# set before Ray starts (the controller inherits them).
for _key, _value in JOB_ENV.items():
    os.environ.setdefault(_key, _value)
os.environ.setdefault("RAY_DEDUP_LOGS", "0")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


NO_RAY_VAR = "CASCADEVAE_TEST_NO_RAY"
"""Set to 1 (`make test-fast` does): starting a Ray node in this process fails the test."""
RAY_FIXTURES = ("ray_session", "fit_debug", "two_workers_run")
"""Fixtures that start (or need) the session's Ray cluster."""


def pytest_configure(config):
    """With NO_RAY_VAR=1, a test that starts or joins a Ray cluster in this process fails with
    an error naming the variable (a test that starts Ray must be marked slow)."""
    if os.environ.get(NO_RAY_VAR) != "1":
        return
    import ray._private.node

    def refuse(*args, **kwargs):
        raise RuntimeError(
            f"a Ray node was started with {NO_RAY_VAR}=1 (make test-fast): a test that starts "
            "Ray must be marked @pytest.mark.slow"
        )

    ray._private.node.Node.__init__ = refuse


def pytest_collection_modifyitems(config, items):
    """A test that uses a Ray fixture must be marked slow, so that `make test-fast` (-m "not
    slow") starts no Ray: one that is not is a collection error naming it."""
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
