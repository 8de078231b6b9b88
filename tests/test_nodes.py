"""The multi-node checks without a cluster: placement settings, the STRICT_SPREAD node count,
the storage message naming the nodes that cannot see the run folder, and `launch.train`
exiting 2 with it. (The real probe on real nodes runs in test_multinode.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from trainer.config import ConfigError, load_config
from trainer.distributed import nodes
from trainer.distributed.nodes import NodeReport, storage_message, strict_spread_problem

DEBUG = Path(__file__).parent.parent / "configs" / "debug.yaml"


def _node(node_id: str, cpus: float, *extra: str, head: bool = False) -> dict:
    resources = {"CPU": cpus, "memory": 1.0, f"node:10.0.0.{len(node_id)}": 1.0}
    resources |= {name: 1.0 for name in extra}
    if head:
        resources[nodes.HEAD_RESOURCE] = 1.0
    return {
        "NodeID": node_id,
        "Alive": True,
        "NodeManagerAddress": "10.0.0.7",
        "Resources": resources,
    }


def test_placement_settings_are_validated():
    config = load_config(DEBUG)
    assert config.train.placement_strategy == "PACK" and config.solver.placement == "head"
    config = load_config(
        DEBUG, ["train.placement_strategy=STRICT_SPREAD", "solver.placement=rank0"]
    )
    assert config.train.placement_strategy == "STRICT_SPREAD"
    assert config.solver.placement == "rank0"
    with pytest.raises(ConfigError) as err:
        load_config(DEBUG, ["train.placement_strategy=spread", "solver.placement=worker"])
    assert "train.placement_strategy" in str(err.value) and "solver.placement" in str(err.value)


def test_strict_spread_needs_a_node_per_worker():
    cluster = [_node("a" * 56, 2, head=True), _node("b" * 56, 1), _node("c" * 56, 0.5)]
    assert strict_spread_problem(cluster, 2, 1.0) is None
    message = strict_spread_problem(cluster, 3, 1.0)
    assert message is not None and "3 workers" in message and "2 of the cluster's 3" in message
    assert strict_spread_problem(cluster, 2, 2.0) is not None  # only the head has 2 CPUs


def test_node_labels_name_address_role_and_custom_resources():
    label = nodes.node_label(_node("0123456789abcdef", 4, "node_w1", "trial_driver", head=True))
    assert label == "10.0.0.7 head [node_w1, trial_driver] (id 01234567)"


def test_storage_message_names_only_the_failing_nodes(tmp_path):
    reports = [
        NodeReport("a", "10.0.0.1 head (id aaaaaaaa)", None),
        NodeReport("b", "10.0.0.2 [node_w1] (id bbbbbbbb)", "cannot read the driver's probe file"),
    ]
    message = storage_message(tmp_path, reports)
    assert message is not None
    assert "1 of 2 node(s)" in message and "node_w1" in message and "10.0.0.2" in message
    assert "10.0.0.1" not in message
    assert message.startswith(f"train.storage_path: {tmp_path}")
    assert storage_message(tmp_path, reports[:1]) is None


def test_probe_reads_the_token_and_writes_its_own_file(tmp_path, monkeypatch):
    """The part of the probe that runs on a node, against a folder that holds the driver's
    token, one that holds another token, and one without it."""

    class Context:
        def get_node_id(self):
            return "n1"

    import ray

    monkeypatch.setattr(ray, "get_runtime_context", lambda: Context())
    (tmp_path / ".storage-probe-x").write_text("token")
    assert nodes._probe_on_node(str(tmp_path), ".storage-probe-x", "token") is None
    assert (tmp_path / ".storage-probe-x.n1").read_text() == "n1"
    assert "another token" in nodes._probe_on_node(str(tmp_path), ".storage-probe-x", "other")
    missing = nodes._probe_on_node(str(tmp_path / "elsewhere"), ".storage-probe-x", "token")
    assert missing.startswith("cannot read the driver's probe file")


def test_train_exits_2_naming_the_nodes_that_cannot_see_the_storage(tmp_path, monkeypatch, capsys):
    import launch.cluster
    import launch.train
    import trainer.distributed.worker

    failing = NodeReport("b", "10.0.0.2 [node_w1] (id bbbbbbbb)", "cannot read the driver's file")
    monkeypatch.setattr(launch.cluster, "connect", lambda **_: "test cluster")
    monkeypatch.setattr(launch.cluster, "check_resources", lambda *_: None)
    monkeypatch.setattr(nodes, "probe_storage", lambda storage: [failing])

    def no_fit(*_, **__):
        raise AssertionError("the run started")

    monkeypatch.setattr(trainer.distributed.worker, "fit", no_fit)
    storage = tmp_path / "runs"
    code = launch.train.main(["--config", str(DEBUG), "--set", f"train.storage_path={storage}"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"train.storage_path: {storage}" in err and "10.0.0.2 [node_w1]" in err
