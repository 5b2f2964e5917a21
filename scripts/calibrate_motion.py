"""Calibrate an identity's sampled head motion against its tracked motion (train.py does it after training
audio2headpose; run this after changing the pose model by hand, or when training could not):

    python scripts/calibrate_motion.py --id Alice [--speech folder_of_speech] [--device cuda]

Samples the pose model config/<id>.yaml points at over other speakers' speech and the person's own training
audio, and writes Headpose.sigma, smooth, noise_correlation, motion_gain and motion_offset into that config
(models/runtime/motion.py explains how).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv: list[str] | None = None) -> int:
    from datasets.identity import CONFIG_DIR
    from util.argtypes import ArgumentParser

    p = ArgumentParser(prog="calibrate_motion.py", description=__doc__,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--id", type=str, required=True, help="the identity (config/<id>.yaml)")
    p.add_argument("--config_dir", type=Path, default=CONFIG_DIR, help="folder of <id>.yaml files")
    p.add_argument("--speech", type=Path, default=None,
                   help="folder of other speakers' speech (default: the bundled data/example_src/speech)")
    p.add_argument("--device", type=str, default="cpu", help="cpu or cuda")
    args = p.parse_args(argv)
    from models.runtime.motion import calibrate_identity
    from util.errors import run_cli
    from util.log import get_logger

    get_logger()

    def work() -> None:
        cal = calibrate_identity(args.id, args.config_dir, speech=args.speech, device=args.device)
        print(f"{args.config_dir / (args.id + '.yaml')}: Headpose {cal.config_values()}")

    return run_cli("calibrate_motion.py", work)


if __name__ == "__main__":
    sys.exit(main())
