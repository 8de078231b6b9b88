"""Evaluate a checkpoint: print the disentanglement metrics as JSON and write traversal images.

    python -m launch.evaluate --checkpoint runs/quick/checkpoint_XXX [--protocols mig,factorvae]
                              [--out DIR] [--device cpu] [--set data.num_positions=32]
                              [--metric-option factorvae_num_train=1000]

The checkpoint folder carries the config that made it, so no other input is needed; `--set`
changes fields of that config (e.g. evaluate on another dSprites grid) and
`--metric-option KEY=VALUE` sets a metric option: the same as `--set eval.KEY=VALUE`, for the
options the registry declares (trainer.eval.registry.option_names; `num_global=null` represents
every image). Images go to `--out` (default: `<checkpoint>/eval`): reconstructions.png and
traversal_category<k>.png, beside metrics.json. No Ray is started.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import yaml


def save_png(image_1HW: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = (image_1HW.clamp(0, 1)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def shape_problems(built: dict, saved: dict, trained: dict, config) -> list[str]:
    """One line per overridden field that gives the model other tensors than the checkpoint's
    (`trained`: the checkpoint's flat config), then the tensors that differ;
    [] when the model built from `config` takes the checkpoint's weights."""
    differ = [
        f"{key}: {tuple(built[key].shape) if key in built else 'absent'} in the model, "
        f"{tuple(saved[key].shape) if key in saved else 'absent'} in the checkpoint"
        for key in sorted(built.keys() | saved.keys())
        if key not in built or key not in saved or built[key].shape != saved[key].shape
    ]
    if not differ:
        return []
    from trainer.variants.registry import variant_of

    model_sections = {"model", variant_of(config).section}
    flat = config.flat()
    fields = [
        f"{key}: the checkpoint was trained with {trained.get(key)!r}, --set gives "
        f"{flat[key]!r}; the model's shapes must match the checkpoint's"
        for key in sorted(flat)
        if key.split(".")[0] in model_sections and trained.get(key) != flat[key]
    ]
    more = f" (and {len(differ) - 3} more)" if len(differ) > 3 else ""
    return fields + ["tensors that differ: " + "; ".join(differ[:3]) + more]


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m launch.evaluate", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder (or its state.pt)")
    parser.add_argument("--protocols", default=None, help="comma-separated; default: the config's")
    parser.add_argument("--out", default=None, help="folder for images (default <checkpoint>/eval)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seed", type=int, default=None, help="evaluation seed (default: the run's)"
    )
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a field of the run's config, e.g. data.num_positions=32",
    )
    parser.add_argument(
        "--metric-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="metric option, e.g. factorvae_num_train=1000 (trainer.eval.options.EvalConfig)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    from trainer.build import build_model, evaluation_kwargs, open_data
    from trainer.checkpoint import CONFIG_FILE, CorruptCheckpointError, read_checkpoint
    from trainer.config import Config, ConfigError, apply_overrides
    from trainer.eval import evaluate_model, metric_option_overrides
    from trainer.eval.registry import METRICS
    from trainer.loop import load_batch
    from trainer.observe.images import preview_indices, reconstructions, traversals
    from trainer.runtime import keep_freed_memory

    keep_freed_memory()

    checkpoint = Path(args.checkpoint)
    if not checkpoint.exists():
        print(f"error: checkpoint path does not exist: {checkpoint}", file=sys.stderr)
        return 2
    try:
        payload, config_yaml = read_checkpoint(checkpoint)
        raw = yaml.safe_load(config_yaml)
    except CorruptCheckpointError as err:
        print(f"error: cannot read checkpoint {err.path}: {err.reason}", file=sys.stderr)
        return 2
    except yaml.YAMLError as err:
        config_path = (checkpoint.parent if checkpoint.is_file() else checkpoint) / CONFIG_FILE
        print(f"error: cannot read checkpoint {config_path}: {err}", file=sys.stderr)
        return 2
    except FileNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    try:
        if not isinstance(raw, dict):
            raise ConfigError(
                [f"expected a mapping, got {raw!r}"], f"{args.checkpoint}/config.yaml"
            )
        trained = raw
        raw = apply_overrides(raw, [*args.set, *metric_option_overrides(args.metric_option)])
        config = Config.from_dict(raw, source=f"{args.checkpoint}/config.yaml")
        kwargs = evaluation_kwargs(config)
        model = build_model(config)
        trained_flat = Config.from_dict(trained, source=f"{args.checkpoint}/config.yaml").flat()
        problems = shape_problems(model.state_dict(), payload["model"], trained_flat, config)
        if problems:
            raise ConfigError(problems, f"--set on checkpoint {args.checkpoint}")
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.protocols:
        protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
        unknown = [p for p in protocols if p not in METRICS]
        if unknown:
            print(
                f"error: --protocols: unknown {unknown}; choose from {list(METRICS)}",
                file=sys.stderr,
            )
            return 2
        kwargs["protocols"] = protocols
    if args.seed is not None:
        kwargs["seed"] = args.seed

    # Rebuild the model from the checkpoint and the data from the (possibly overridden) config.
    device = torch.device(args.device)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    dataset = open_data(config, progress=True)

    # Metrics, timed.
    started = time.perf_counter()
    metrics = evaluate_model(model, dataset, device=device, **kwargs)
    seconds = time.perf_counter() - started

    # Pictures next to them.
    folder = Path(args.checkpoint)
    folder = folder.parent if folder.is_file() else folder
    out = Path(args.out) if args.out else folder / "eval"
    out.mkdir(parents=True, exist_ok=True)
    preview = load_batch(dataset, preview_indices(len(dataset)), device)
    save_png(reconstructions(model, preview), out / "reconstructions.png")
    for category, grid in traversals(model, preview[:1]).items():
        name = "traversal.png" if category is None else f"traversal_category{category}.png"
        save_png(grid, out / name)
    report = {
        "checkpoint": str(folder),
        "step": int(payload["next_step"]),
        "images": str(out),
        "num_images": len(dataset),
        "protocols": list(kwargs["protocols"]),
        "eval_seconds": round(seconds, 2),
        **metrics,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
