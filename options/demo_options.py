"""Options of demo.py: drive one identity with one audio file (the release's flags, typed)."""

from __future__ import annotations

import argparse
from pathlib import Path

from models.runtime.renderer import BACKENDS
from options.common import log_non_defaults
from util.argtypes import ArgumentParser, non_negative_float, positive_int, seed


class DemoOptions:
    """`python demo.py --id May --driving_audio speech.wav [--device cuda] [--seed 0]`."""

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser.add_argument("--id", type=str, required=True,
                            help="identity: reads config/<id>.yaml and the data/<id>/ folder it points at")
        parser.add_argument("--driving_audio", type=Path, default=None,
                            help="speech to drive the portrait: wav/flac/mp3/ogg/m4a/mp4, any rate, mono or stereo")
        parser.add_argument("--device", type=str, default="cpu", help="cpu, cuda or cuda:N")
        parser.add_argument("--seed", type=seed, default=0, help="seed of the head-motion sampling")
        parser.add_argument("--results_dir", type=Path, default=Path("results"),
                            help="outputs go to <results_dir>/<id>/<audio name>/")
        parser.add_argument("--save_intermediates", action="store_true",
                            help="also keep every frame and feature map as PNG, and the audio features in the .npz")
        parser.add_argument("--sigma_scale", type=non_negative_float, default=None,
                            help="scale of the sampled head-motion sigma (default: config Headpose.sigma, 0.3); "
                                 "0 gives the mean motion")
        parser.add_argument("--pose_file", type=Path, default=None,
                            help="explicit head poses instead of sampling: .npy/.txt/.csv of N x 6 rows "
                                 "[rot x y z in degrees, trans x y z], or an .npz with rot_angles and trans "
                                 "(e.g. the identity's 3d_fit_data.npz); looped back and forth to the audio length")
        parser.add_argument("--config_dir", type=Path, default=None,
                            help="folder of <id>.yaml files (default: the project's config/)")
        parser.add_argument("--batch_size", type=positive_int, default=None,
                            help="frames rendered per network call (default: 8 offline on CUDA; 1 on a CPU, where "
                                 "batching was measured slower, and in live modes, where a batch waits for frames)")
        parser.add_argument("--overlap", type=str, default="auto", choices=("auto", "on", "off"),
                            help="offline: run the audio side, the renderer and encoding in overlapped threads "
                                 "(auto: on with CUDA, off on a CPU, where the stages share the same cores)")
        parser.add_argument("--overwrite", action="store_true",
                            help="write into an existing results folder, replacing the files this demo makes")
        parser.add_argument("--backend", type=str, default="torch", choices=BACKENDS,
                            help="renderer backend: torch eager; compile (torch.compile, CUDA graphs on a GPU; "
                                 "compiling takes a while first); onnx / onnx_int8 (the files "
                                 "scripts/export_onnx.py [--int8] writes, on the CPU)")
        parser.add_argument("--stream", action="store_true",
                            help="live mode: feed the audio paced as if it arrived in real time, render frames as "
                                 "soon as the lookahead allows, and print the latency")
        parser.add_argument("--mic", action="store_true",
                            help="live mode from the default microphone (needs a sound device); Ctrl-C stops")
        parser.add_argument("--mic_seconds", type=non_negative_float, default=0.0,
                            help="with --mic: stop after this many seconds (0 = until Ctrl-C)")
        parser.add_argument("--chunk_ms", type=non_negative_float, default=20.0,
                            help="live modes: audio arrives in chunks of this many milliseconds")
        parser.add_argument("--hop_ms", type=non_negative_float, default=50.0,
                            help="live modes: run the audio side once this much new audio has come (each run has "
                                 "a fixed cost; the frames do not depend on it, the latency grows by up to it)")
        parser.add_argument("--max_lag_ms", type=non_negative_float, default=150.0,
                            help="live modes: a frame this late beyond the models' lookahead is skipped (the "
                                 "previous image repeats) so the session stays live; 0 renders every frame")
        parser.add_argument("--frame_step", type=positive_int, default=1,
                            help="render every n-th model frame (2 = 30 fps from a 60 fps model) to keep up live")
        parser.add_argument("--verbose", action="store_true", help="log more")
        return parser

    def parse(self, args: list[str] | None = None) -> argparse.Namespace:
        parser = self.initialize(ArgumentParser(prog="demo.py",
            description="Drive a trained Live Speech Portraits identity with speech.",
            formatter_class=argparse.ArgumentDefaultsHelpFormatter))
        opt = parser.parse_args(args)
        if opt.driving_audio is None and not opt.mic:
            parser.error("the following arguments are required: --driving_audio (unless --mic)")
        self.parser = parser
        log_non_defaults(opt, parser)
        return opt
