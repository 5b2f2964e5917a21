"""Evaluate a trained identity: python scripts/evaluate.py --id Alice --driving_audio other_speaker.wav

Drives the identity with the speech of its held-out tail and with another speaker (as demo.py), then
measures renderer fidelity (PSNR, SSIM; LPIPS with --lpips_*), audio to mouth and end to end (the
rendered video re-tracked) mouth distance and opening correlation, head-pose statistics, lip sync
(LSE-D / LSE-C with --syncnet_ckpt) and speed; writes results/<id>/metrics.json and report.html.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main(argv: list[str] | None = None) -> int:
    from models.evaluation.evaluate import add_metric_weight_flags, demo_and_evaluate, metric_weights
    from util.argtypes import ArgumentParser
    from util.log import get_logger

    p = ArgumentParser(prog="evaluate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, required=True, help="the identity (data/<id>/, config/<id>.yaml)")
    p.add_argument("--driving_audio", type=Path, required=True, help="another speaker's speech")
    p.add_argument("--device", type=str, default="cpu", help="cpu or cuda")
    p.add_argument("--data_root", type=Path, default=ROOT / "data", help="identities live here")
    p.add_argument("--config_dir", type=Path, default=ROOT / "config", help="folder of <id>.yaml files")
    p.add_argument("--results_dir", type=Path, default=ROOT / "results", help="videos and the report go here")
    p.add_argument("--speech", type=Path, default=None, help="the APC training speech, for the report's summary")
    add_metric_weight_flags(p)
    args = p.parse_args(argv)
    weights = metric_weights(p, args)
    from datasets.identity import check_identity_name
    from util.errors import run_cli

    get_logger()

    def work() -> None:
        report = demo_and_evaluate(check_identity_name(args.id), args.data_root, args.config_dir, args.results_dir,
                                   args.driving_audio, args.device, {}, weights, args.speech)
        print(f"\nevaluation written: open {report}")

    return run_cli("evaluate.py", work)


if __name__ == "__main__":
    sys.exit(main())
