"""Drive a trained identity with any speech: python demo.py --id May --driving_audio speech.wav

Writes results/<id>/<audio name>/<audio name>.mp4 (H.264 + AAC at the model fps), the feature-map
video beside it, and <audio name>.npz with the predicted landmarks, head poses and shoulders.
"""

from __future__ import annotations

import argparse
import sys


def main(opt: argparse.Namespace, parser: argparse.ArgumentParser | None = None) -> dict:
    """Run the demo for parsed options; returns the paths written. Raises InputError on bad input."""
    from models.pipeline import PortraitPipeline, load_pose_file
    from options.common import save_options
    from util.audio import load_audio
    from util.errors import InputError

    name = opt.driving_audio.stem
    out_dir = opt.results_dir / opt.id / name
    if out_dir.exists() and any(out_dir.iterdir()) and not opt.overwrite:
        raise InputError(f"results folder {out_dir} already exists; pass --overwrite to replace the demo's files "
                         "in it, or choose another --results_dir")
    pipeline = PortraitPipeline.from_identity(opt.id, opt.device, opt.config_dir)
    audio = load_audio(opt.driving_audio, pipeline.sample_rate, what="--driving_audio")
    poses = None
    if opt.pose_file is not None:
        poses = load_pose_file(opt.pose_file, pipeline.check_audio(audio, str(opt.driving_audio)))
    pred = pipeline.predict(audio, str(opt.driving_audio), seed=opt.seed, sigma_scale=opt.sigma_scale, poses=poses)
    paths = pipeline.write(pred, audio, out_dir, name, opt.batch_size, opt.save_intermediates)
    if parser is not None:
        save_options(opt, parser, out_dir, "demo")
    return paths


def cli(args: list[str] | None = None) -> int:
    """Parse the command line, run, and turn bad input into a one-line error (exit status 2)."""
    from options.demo_options import DemoOptions
    from util.errors import InputError
    from util.log import get_logger

    logger = get_logger()
    options = DemoOptions()
    opt = options.parse(args)
    logger.setLevel(10 if opt.verbose else 20)
    try:
        paths = main(opt, options.parser)
    except InputError as err:
        print(f"demo.py: error: {err}", file=sys.stderr)
        return 2
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(cli())
