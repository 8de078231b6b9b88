"""Evaluate a checkpoint: print the disentanglement metrics as JSON and write traversal images.

    python -m launch.evaluate --checkpoint runs/quick/checkpoint_XXX [--protocols mig,factorvae]
                              [--out DIR] [--device cpu]

The checkpoint folder carries the config that made it, so no other input is needed. Images go to
`--out` (default: `<checkpoint>/eval`): reconstructions.png and traversal_category<k>.png.
No Ray is started.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import yaml


def save_png(image_1HW: torch.Tensor, path: Path) -> None:
    from PIL import Image

    pixels = (image_1HW.clamp(0, 1)[0].numpy() * 255).round().astype(np.uint8)
    Image.fromarray(pixels, mode="L").save(path)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m launch.evaluate", description=__doc__.split("\n")[1]
    )
    parser.add_argument("--checkpoint", required=True, help="a checkpoint folder (or its state.pt)")
    parser.add_argument("--protocols", default=None, help="comma-separated; default: the config's")
    parser.add_argument("--out", default=None, help="folder for images (default <checkpoint>/eval)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--seed", type=int, default=None, help="evaluation seed (default: the run's)"
    )
    args = parser.parse_args(argv)

    from trainer.checkpoint import read_checkpoint
    from trainer.config import EVAL_PROTOCOLS, Config, ConfigError
    from trainer.metrics import evaluate_model
    from trainer.visualize import reconstructions, traversals
    from trainer.worker import build_model, evaluation_kwargs, load_batch, open_data

    try:
        payload, config_yaml = read_checkpoint(args.checkpoint)
        config = Config.from_dict(
            yaml.safe_load(config_yaml), source=f"{args.checkpoint}/config.yaml"
        )
    except (FileNotFoundError, ConfigError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    kwargs = evaluation_kwargs(config)
    if args.protocols:
        protocols = tuple(p.strip() for p in args.protocols.split(",") if p.strip())
        unknown = [p for p in protocols if p not in EVAL_PROTOCOLS]
        if unknown:
            print(
                f"error: --protocols: unknown {unknown}; choose from {list(EVAL_PROTOCOLS)}",
                file=sys.stderr,
            )
            return 2
        kwargs["protocols"] = protocols
    if args.seed is not None:
        kwargs["seed"] = args.seed

    device = torch.device(args.device)
    model = build_model(config)
    model.load_state_dict(payload["model"])
    model.to(device).eval()
    dataset = open_data(config, progress=True)
    metrics = evaluate_model(model, dataset, device=device, **kwargs)

    folder = Path(args.checkpoint)
    folder = folder.parent if folder.is_file() else folder
    out = Path(args.out) if args.out else folder / "eval"
    out.mkdir(parents=True, exist_ok=True)
    preview = load_batch(dataset, np.linspace(0, len(dataset) - 1, 8).astype(np.int64), device)
    save_png(reconstructions(model, preview), out / "reconstructions.png")
    for category, grid in traversals(model, preview[:1]).items():
        save_png(
            grid,
            out / ("traversal.png" if category is None else f"traversal_category{category}.png"),
        )
    report = {
        "checkpoint": str(folder),
        "step": int(payload["next_step"]),
        "images": str(out),
        **metrics,
    }
    (out / "metrics.json").write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
