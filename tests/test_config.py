"""Config validation: every shipped config is valid; every bad one is refused with all problems."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml

from trainer.config import SECTIONS, Config, ConfigError, apply_overrides, load_config

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.yaml"))
DEBUG = CONFIG_DIR / "debug.yaml"


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_are_valid(path):
    config = load_config(path)
    assert config.name == path.stem
    # Round trip: the resolved config re-validates to the same values.
    assert Config.from_dict(yaml.safe_load(config.to_yaml())) == config


def test_paper_config_holds_the_authors_settings():
    c = load_config(CONFIG_DIR / "dsprites.yaml")
    assert (c.train.num_steps, c.train.global_batch) == (300_000, 64)
    assert (c.cascade.stage_length, c.cascade.discrete_start_stage) == (20_000, 4)
    assert c.cascade.code_only_stages == 1
    assert (c.cascade.beta_high, c.cascade.beta_low, c.solver.lam) == (10.0, 0.1, 0.001)
    # Constant 1e-4: the authors' staircase decay is defined but never advanced in their code.
    assert (c.optim.lr, c.optim.decay_rate) == (1e-4, 1.0)
    assert (c.train.eval_every, c.train.keep_best_by) == (10_000, "eval/authors_factorvae")
    assert (c.data.num_scales, c.data.num_orientations, c.data.num_positions) == (6, 40, 32)
    assert c.model.weight_penalty == 4e-5
    assert load_config(CONFIG_DIR / "dsprites_c.yaml").model.effective_categories == 0


def _problems(raw: dict) -> list[str]:
    with pytest.raises(ConfigError) as info:
        Config.from_dict(raw)
    return info.value.problems


def test_every_problem_is_listed_in_one_error():
    problems = _problems(
        {
            "train": {"num_steps": "many", "global_batch": 10, "num_workers": 3, "bogus": 1},
            "model": {"variant": "gan"},
            "cascadee": {},
            "eval": {"protocols": ["mig"]},
            "data": {"source": "npz"},
            "optim": {"decay_every": 0},
        }
    )
    text = "\n".join(problems)
    assert "train.num_steps: expected int, got 'many'" in text
    assert "train.bogus: unknown key" in text
    assert "cascadee: unknown key" in text
    assert "model.variant: 'gan' is not one of" in text
    assert "optim.decay_every: must be >= 1, got 0" in text
    # Rules over several fields still run when other fields are invalid.
    assert "train.global_batch: 10 is not divisible by train.num_workers=3" in text
    assert "data.npz_path: required when data.source is 'npz'" in text
    assert len(problems) == 7, problems


def test_a_rule_over_an_invalid_field_is_not_checked():
    # The variant is unknown, so whether it has a discrete code for discrete_accuracy is not
    # asked (its value in the model would be the default, not what was written).
    problems = _problems(
        {"model": {"variant": "gan"}, "eval": {"protocols": ["discrete_accuracy"]}}
    )
    assert problems == [
        "model.variant: 'gan' is not one of 'cascade', 'cascade_c', 'beta_vae', 'jointvae', "
        "'oracle' or 'factorvae'"
    ]
    problems = _problems({"model": {"variant": "beta_vae"}, "eval": {"protocols": ["mig", "x"]}})
    assert problems == [
        "eval.protocols: unknown ['x']; choose from "
        "['authors_factorvae', 'factorvae', 'discrete_accuracy', 'mig', 'factor_dim_mi']"
    ]


def test_cross_section_rules_are_listed_together():
    problems = _problems(
        {
            "model": {"variant": "beta_vae"},
            "train": {"num_steps": 100, "keep_best_by": "eval/active_dims"},
            "cascade": {"stage_length": 10, "discrete_start_stage": 20},
        }
    )
    assert problems == [
        "train.keep_best_by: 'eval/active_dims' is not a score of eval.protocols "
        "['authors_factorvae', 'discrete_accuracy']; choose from "
        "['eval/authors_factorvae', 'eval/discrete_accuracy']",
        "eval.protocols: discrete_accuracy needs a discrete code (variant beta_vae has none)",
    ]


def test_unknown_protocol_is_refused_listing_the_registry():
    from trainer.eval.registry import METRICS

    problems = _problems({"eval": {"protocols": ["authors_factorvae", "fid"]}})
    assert problems == [f"eval.protocols: unknown ['fid']; choose from {list(METRICS)}"]
    for name in METRICS:  # every registered protocol is accepted (with a discrete code)
        assert Config.from_dict({"eval": {"protocols": [name]}}).eval.protocols == [name]


@pytest.mark.parametrize(
    "raw, problem",
    [
        (
            {"solver": {"typo": 1}},
            "solver.typo: unknown key (known: actor_name, lam, placement, timeout_s, transport)",
        ),
        ({"train": {"lr": 1e-3}}, "train.lr: unknown key (known: autocast, channels_last, "),
        ({"eval": {"num_vote": 3}}, "eval.num_vote: unknown key (known: batch_size, "),
        ({"jointvae": {"gamma": 1.0, "beta": 2}}, "jointvae.beta: unknown key (known: "),
        ({"colour": "red"}, "colour: unknown key (known: cascade, data, eval, factorvae, "),
    ],
)
def test_extra_keys_are_refused_with_their_dotted_path(raw, problem):
    (only,) = _problems(raw)
    assert only.startswith(problem)


def test_discrete_start_after_the_last_stage_is_refused():
    problems = _problems(
        {"train": {"num_steps": 100}, "cascade": {"stage_length": 50, "discrete_start_stage": 4}}
    )
    assert any("after the last stage 1 of train.num_steps=100" in p for p in problems)


def test_an_evaluation_at_the_discrete_start_must_fall_within_the_run():
    steps = {"stage_length": 50, "discrete_start_stage": 2}
    config = Config.from_dict(
        {"train": {"num_steps": 150, "eval_at_discrete_start": True}, "cascade": steps}
    )
    assert config.cascade.discrete_start_step == 100 and config.train.eval_at_discrete_start
    # beta_vae has no discrete stage; its run still evaluates at the same step, which must fall
    # within the run.
    raw = {"model": {"variant": "beta_vae"}, "cascade": steps, "eval": {"protocols": ["mig"]}}
    (problem,) = _problems({**raw, "train": {"num_steps": 100, "eval_at_discrete_start": True}})
    assert problem == (
        "train.eval_at_discrete_start: the discrete start, step 100 (cascade.stage_length x "
        "cascade.discrete_start_stage), is not within the run's steps 1..99"
    )
    start_at_zero = {"stage_length": 50, "discrete_start_stage": 0}
    problems = _problems({"train": {"eval_at_discrete_start": True}, "cascade": start_at_zero})
    assert any("the discrete start, step 0 " in p for p in problems)


@pytest.mark.parametrize(
    "raw, fragment",
    [
        ({"solver": {"lam": -1}}, "solver.lam: must be >= 0"),
        ({"train": {"global_batch": 0}}, "train.global_batch: must be >= 1"),
        ({"data": {"source": "npz"}}, "data.npz_path: required"),
        ({"data": {"source": "npz", "npz_path": "/nope.npz"}}, "file not found: /nope.npz"),
        ({"eval": {"protocols": ["fid"]}}, "eval.protocols: unknown ['fid']"),
        ({"train": {"use_gpu": "yes"}}, "train.use_gpu: expected bool"),
        ({"optim": {"lr": 0}}, "optim.lr: must be > 0"),
        ({"model": {"num_categories": 1}}, "model.num_categories: variant cascade needs >= 2"),
        ({"train": 5}, "train: expected a mapping"),
        ({"train": {"gpus_per_worker": 0}}, "train.gpus_per_worker: must be > 0"),
        ({"train": {"gpus_per_worker": 1.5}}, "train.gpus_per_worker: must be <= 1"),
    ],
)
def test_single_bad_values(raw, fragment):
    assert any(fragment in p for p in _problems(raw)), _problems(raw)


def test_ints_accepted_for_floats_but_not_bools_for_ints():
    assert Config.from_dict({"solver": {"lam": 1}}).solver.lam == 1.0
    assert any("expected int" in p for p in _problems({"seed": True}))


def test_overrides_parse_yaml_values():
    raw = apply_overrides({"train": {"num_steps": 5}}, ["train.num_steps=7", "solver.lam=1e-2"])
    assert raw == {"train": {"num_steps": 7}, "solver": {"lam": "1e-2"}}  # YAML 1.1 string
    assert Config.from_dict({"solver": raw["solver"]}).solver.lam == 0.01  # a float field takes it
    with pytest.raises(ConfigError, match="expected key=value"):
        apply_overrides({}, ["train.num_steps"])


def test_bad_yaml_file_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)
    with pytest.raises(ConfigError, match="file not found"):
        load_config(tmp_path / "missing.yaml")


def test_launch_refuses_a_bad_config_before_any_ray_work(capsys, no_ray):
    import ray

    from launch.train import main

    # An earlier test in this process may have started the session's Ray: the refusal must
    # leave it as it was (no_ray fails the test if the command reaches launch.cluster.connect).
    ray_was_initialized = ray.is_initialized()
    code = main(["--config", str(DEBUG), "--set", "train.num_workers=3", "--set", "train.bogus=1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err and "train.bogus: unknown key" in err
    assert "train.global_batch: 16 is not divisible by train.num_workers=3" in err
    assert ray.is_initialized() == ray_was_initialized


def test_nan_and_inf_are_refused_in_every_float_field_and_listed_together():
    problems = _problems(
        {
            "solver": {"lam": float("nan")},
            "cascade": {"beta_high": float("inf"), "beta_low": float("-inf")},
            "optim": {"decay_rate": float("nan")},
            "train": {"global_batch": 0},
        }
    )
    assert problems == [
        "cascade.beta_high: must be a finite number, got inf",
        "cascade.beta_low: must be a finite number, got -inf",
        "solver.lam: must be a finite number, got nan",
        "optim.decay_rate: must be a finite number, got nan",
        "train.global_batch: must be >= 1, got 0",
    ]


def test_every_float_field_is_checked_for_finiteness():
    checked = []
    for section in SECTIONS:
        values = getattr(Config(), section)
        for name in type(values).model_fields:
            if isinstance(getattr(values, name), float):
                for bad in (math.nan, math.inf, -math.inf):
                    problem = f"{section}.{name}: must be a finite number, got {bad}"
                    assert problem in _problems({section: {name: bad}})
                checked.append(f"{section}.{name}")
    # At least one float field of every section that has one, the eval options included.
    assert {"model.beta", "cascade.beta_low", "eval.kl_threshold", "jointvae.gamma"} <= set(checked)
    assert "eval.factorvae_std_threshold" in checked and "train.cpus_per_worker" in checked


@pytest.mark.parametrize("text", [".nan", "nan", ".inf", "-.inf", "inf"])
def test_non_finite_override_is_refused(tmp_path, text):
    path = tmp_path / "c.yaml"
    path.write_text("name: c\n")
    with pytest.raises(ConfigError, match=r"solver\.lam: must be a finite number") as info:
        load_config(path, [f"solver.lam={text}"])
    assert str(path) in str(info.value)


def test_launch_exits_2_on_a_non_finite_value(capsys, no_ray):
    from launch.train import main

    assert main(["--config", str(DEBUG), "--set", "solver.lam=.nan"]) == 2
    assert "solver.lam: must be a finite number, got nan" in capsys.readouterr().err


@pytest.mark.parametrize(
    "text, problem",
    [
        ("", "{path} is empty; expected a mapping of settings"),
        ("# only a comment\n", "{path} is empty; expected a mapping of settings"),
        ("{}\n", "{path} is an empty mapping; expected settings"),
        ("- train\n- model\n", "{path}: expected a mapping at the top level, got list"),
        ("quick\n", "{path}: expected a mapping at the top level, got str 'quick'"),
    ],
)
def test_empty_or_non_mapping_config_file_is_refused(tmp_path, text, problem):
    path = tmp_path / "c.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    assert len(info.value.problems) == 1
    assert info.value.problems[0].startswith(problem.format(path=path))


def test_launch_exits_2_on_an_empty_config_file(tmp_path, capsys, no_ray):
    from launch.train import main

    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert main(["--config", str(path)]) == 2
    assert f"{path} is empty" in capsys.readouterr().err


def test_device_switches_default_to_auto():
    c = Config()
    assert (c.train.data_on_device, c.train.metrics_on_device) == ("auto", "auto")
    assert (c.train.autocast, c.train.channels_last) == ("auto", "auto")
    assert (c.train.compile, c.optim.implementation) == ("none", "auto")


@pytest.mark.parametrize(
    "override, value",
    [("train.data_on_device=true", True), ("train.data_on_device=false", False),
     ("train.metrics_on_device=auto", "auto"), ("train.compile=reduce-overhead", "reduce-overhead"),
     ("train.autocast=bf16", "bf16"), ("train.autocast=none", "none"),
     ("train.channels_last=false", False), ("train.channels_last=auto", "auto"),
     ("optim.implementation=fused", "fused")],
)  # fmt: skip
def test_device_switches_take_their_values(override, value):
    config = load_config((CONFIG_DIR / "debug.yaml"), [override])
    section, field = override.split("=")[0].split(".")
    assert getattr(getattr(config, section), field) == value


def test_bad_device_switches_are_listed_together():
    raw = {
        "train": {"data_on_device": "yes", "metrics_on_device": 1, "compile": "fast",
                  "autocast": "fp16", "channels_last": "nhwc"},
        "optim": {"implementation": "apex"},
    }  # fmt: skip
    problems = " | ".join(_problems(raw))
    for key in ("train.data_on_device", "train.metrics_on_device", "train.compile",
                "train.autocast", "train.channels_last", "optim.implementation"):  # fmt: skip
        assert key in problems, (key, problems)


def test_auto_device_switches_follow_the_device():
    import torch

    from trainer.build import device_switch

    assert device_switch("auto", torch.device("cuda")) is True
    assert device_switch("auto", torch.device("cpu")) is False
    assert device_switch(True, torch.device("cpu")) is True
    assert device_switch(False, torch.device("cuda")) is False


@pytest.mark.parametrize(
    "feature, autocast, channels_last, device, expected",
    [("avx512_bf16", "auto", "auto", "cpu", (True, True)),
     ("amx_bf16", "auto", "auto", "cpu", (True, True)),
     (None, "auto", "auto", "cpu", (False, False)),  # a CPU without bf16 kernels stays fp32
     ("avx512_bf16", "auto", "auto", "cuda", (False, False)),  # CUDA as before: fp32, NCHW
     ("avx512_bf16", "none", "auto", "cpu", (False, False)),  # the explicit fp32 switch
     ("avx512_bf16", "auto", False, "cpu", (True, False)),
     (None, "bf16", "auto", "cpu", (True, True)),  # asked for: bf16 even when emulated
     (None, "none", True, "cpu", (False, True)),
     (None, "bf16", "auto", "cuda", (True, False))],
)  # fmt: skip
def test_auto_precision_follows_the_cpu_features(
    monkeypatch, feature, autocast, channels_last, device, expected
):
    import torch

    import trainer.build as build

    monkeypatch.setattr(build, "cpu_bf16_feature", lambda: feature)
    train = Config().train.model_copy(update={"autocast": autocast, "channels_last": channels_last})
    precision = build.resolve_precision(train, torch.device(device))
    assert (precision.autocast_bf16, precision.channels_last) == expected


def test_the_bf16_feature_is_the_one_named_in_proc_cpuinfo():
    """torch's detection and the kernel's flags agree on this machine (known answer: the flags
    line of /proc/cpuinfo)."""
    from trainer.build import BF16_CPU_FLAGS, cpu_bf16_feature

    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.is_file():
        pytest.skip("no /proc/cpuinfo on this system")
    flags = next(
        (set(line.partition(":")[2].split()) for line in cpuinfo.read_text().splitlines()
         if line.startswith("flags")),
        set(),
    )  # fmt: skip
    expected = next((flag for flag in BF16_CPU_FLAGS if flag in flags), None)
    assert cpu_bf16_feature() == expected


@pytest.mark.parametrize(
    "transport, use_gpu, used",
    [
        ("auto", False, "ordinary"),
        ("auto", True, "compiled"),
        ("compiled", False, "compiled"),
        ("ordinary", True, "ordinary"),
    ],
)
def test_the_auto_transport_is_compiled_on_gpus_and_ordinary_on_cpus(transport, use_gpu, used):
    config = load_config(DEBUG, [f"solver.transport={transport}"])
    assert config.solver.transport == transport
    assert config.solver.transport_for(use_gpu) == used


def test_an_unknown_transport_is_refused_naming_the_field():
    with pytest.raises(ConfigError) as info:
        load_config(DEBUG, ["solver.transport=fast"])
    assert any("solver.transport" in problem for problem in info.value.problems)
