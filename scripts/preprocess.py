"""Build an identity from talking-head video(s) of one person:

    python scripts/preprocess.py --video alice_talk.mp4 [more clips ...] --id Alice

writes data/Alice/ in the release layout (everything demo.py reads, plus per-clip crops, 16 kHz audio,
tracks and train/val lists for training), config/Alice.yaml, data/Alice/meta.json and an overlay video
(data/Alice/overlay.mp4) to look at. A second run reuses finished steps; --force redoes them. After APC
are written with the bundled audio encoder (data/apc/); with another one:
python scripts/preprocess.py --id Alice --only apc_features --apc_ckpt <APC checkpoint>
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    from datasets.identity import CONFIG_DIR, DATA_DIR
    from util.argtypes import (
        ArgumentParser,
        fraction,
        non_negative_float,
        non_negative_int,
        positive_float,
        positive_int,
    )

    p = ArgumentParser(prog="preprocess.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--video", type=Path, nargs="+", default=[], help="video file(s) of the same person talking")
    p.add_argument("--audio", type=Path, nargs="+", default=None,
                   help="speech for each --video (needed when a video has no audio track)")
    p.add_argument("--id", type=str, required=True, help="identity name: data/<id>/ and config/<id>.yaml")
    p.add_argument("--size", type=positive_int, default=512, help="side of the square crop in pixels")
    p.add_argument("--fps", type=positive_float, default=60.0,
                   help="model rate of the audio stages (tracks are resampled)")
    p.add_argument("--val_fraction", type=fraction, default=0.1, help="fraction of the time held out at the end")
    p.add_argument("--max_gap", type=non_negative_float, default=0.5,
                   help="seconds without a face that are bridged by interpolation; longer gaps split a clip")
    p.add_argument("--min_clip", type=non_negative_float, default=2.0,
                   help="seconds: shorter runs of a tracked face are dropped")
    p.add_argument("--min_total", type=non_negative_float, default=20.0,
                   help="seconds of tracked video needed to train")
    p.add_argument("--candidates", type=non_negative_int, nargs=4, default=None, metavar="I",
                   help="4 training-frame indices to use as candidate images (default: chosen automatically)")
    p.add_argument("--landmarker", type=Path, default=None,
                   help="MediaPipe face_landmarker.task (default: data/face_landmarker.task, fetched on first use)")
    p.add_argument("--apc_ckpt", type=Path, default=None,
                   help="the audio encoder whose features are written (default: the bundled data/apc/apc_h256.pth)")
    p.add_argument("--only", type=str, default=None, choices=("apc_features",), help="run just this step")
    p.add_argument("--force", action="store_true", help="redo every step, writing over this identity's files")
    p.add_argument("--no_overlay", action="store_true", help="do not write overlay.mp4")
    p.add_argument("--data_root", type=Path, default=DATA_DIR, help="identities live here")
    p.add_argument("--config_dir", type=Path, default=CONFIG_DIR, help="config/<id>.yaml goes here")
    args = p.parse_args(argv)
    if args.only is None and not args.video:
        p.error("the following arguments are required: --video (unless --only apc_features)")
    if args.audio is not None and len(args.audio) != len(args.video):
        p.error(f"argument --audio: give one file per --video ({len(args.video)}), got {len(args.audio)}")
    if args.size % 32:
        p.error(f"argument --size: must be a multiple of 32 for the renderer's U-Net, got {args.size}")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from datasets.identity import BUNDLED_APC, check_identity_name
    from datasets.preprocessing.run import Settings, finished_meta, run
    from models.apc_model import write_apc_features
    from util.errors import run_cli
    from util.log import get_logger

    get_logger()

    def work() -> None:
        check_identity_name(args.id)
        settings = Settings(
            identity=args.id, videos=args.video, audios=args.audio or [None] * len(args.video), size=args.size,
            fps=args.fps, val_fraction=args.val_fraction, max_gap=args.max_gap, min_clip=args.min_clip,
            min_total=args.min_total, candidates=args.candidates, landmarker=args.landmarker, force=args.force,
            data_root=args.data_root, config_dir=args.config_dir, overlay=not args.no_overlay)
        meta = finished_meta(settings.root, "--only apc_features") if args.only == "apc_features" else run(settings)
        apc = args.apc_ckpt or (BUNDLED_APC if BUNDLED_APC.is_file() else None)
        if apc is not None or args.only == "apc_features":
            write_apc_features(settings.root, apc, args.config_dir, args.id, meta)
        clips = meta["clips"]
        print(f"identity {args.id}: {sum(c['split'] == 'train' for c in clips)} training and "
              f"{sum(c['split'] == 'val' for c in clips)} validation clip(s) in {settings.root}; "
              f"reprojection error {meta['reprojection']['mean_px']:.4f} px mean")

    return run_cli("preprocess.py", work)


if __name__ == "__main__":
    sys.exit(main())
