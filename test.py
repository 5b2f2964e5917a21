"""Test a trained stage on the identity's held-out split (pix2pix's test.py):

    python test.py --model audio2feature --dataroot data/<id> --name <id>_audio2feature [--epoch best]

Writes <results_dir>/<name>/<split>_<epoch>/metrics.json and an index.html of visuals.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

MAX_VISUAL_ROWS = 20  # batches whose visuals go on the page


def main(opt: argparse.Namespace) -> dict:
    """Run the stage over the split; returns the mean metrics. Raises InputError on bad input."""
    import cv2
    import torch

    from datasets import create_dataset, create_loader
    from models import create_model
    from util.errors import InputError
    from util.html import HTML
    from util.io import write_json
    from util.log import get_logger
    from util.visualizer import tensor_to_image

    get_logger()
    model = create_model(opt)
    model.setup()
    model.load_networks(opt.epoch)
    model.eval()
    dataset = create_dataset(opt, opt.split, model.data_spec())
    if len(dataset) == 0:
        raise InputError(f"--dataroot {opt.dataroot}: the {opt.split} split is empty")
    if opt.num_test:
        dataset = torch.utils.data.Subset(dataset, range(min(opt.num_test, len(dataset))))
    out_dir = Path(opt.results_dir) / opt.name / f"{opt.split}_{opt.epoch}"
    page = HTML(out_dir, f"{opt.name}: {opt.model}, {opt.split} split, epoch {opt.epoch}")
    sums: dict[str, float] = {}
    n = 0
    for i, batch in enumerate(create_loader(dataset, opt, False)):
        model.set_input(batch)
        model.test()
        for k, v in model.current_metrics().items():
            sums[k] = sums.get(k, 0.0) + v
        n += 1
        if i < MAX_VISUAL_ROWS:
            with torch.no_grad():
                model.compute_visuals()
            names = []
            for k, v in model.get_current_visuals().items():
                name = f"{i:04d}_{k}.png"
                cv2.imwrite(str(page.img_dir / name), cv2.cvtColor(tensor_to_image(v), cv2.COLOR_RGB2BGR))
                names.append(name)
            page.add_header(f"batch {i}")
            page.add_images([f"images/{m}" for m in names], [m[5:-4] for m in names], [f"images/{m}" for m in names])
    metrics = {k: v / n for k, v in sums.items()}
    report = {"model": opt.model, "name": opt.name, "epoch": opt.epoch, "split": opt.split, "samples": len(dataset),
              "batches": n, **metrics}
    write_json(out_dir / "metrics.json", report)
    page.add_text("metrics: " + ", ".join(f"{k} = {v:.4f}" for k, v in metrics.items()))
    page.save()
    return report


def cli(args: list[str] | None = None) -> int:
    """Parse, test, print the metrics; bad input is one line and exit 2 (util.errors.run_cli)."""
    from options.test_options import TestOptions
    from util.errors import run_cli
    from util.log import get_logger

    get_logger()
    opt = TestOptions().parse(args)
    if opt.dry_run:
        return 0
    return run_cli("test.py", lambda: print(json.dumps(main(opt), indent=2)))


if __name__ == "__main__":
    sys.exit(cli())
