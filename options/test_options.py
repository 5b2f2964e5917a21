"""TestOptions: run a trained stage on the held-out split and write metrics and an HTML page."""

from __future__ import annotations

import argparse
from pathlib import Path

from options.base_options import BaseOptions
from util.argtypes import positive_int


class TestOptions(BaseOptions):
    """`python test.py --model audio2feature --dataroot data/<id> --name <run>`."""

    is_train = False
    phase = "test"

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = super().initialize(parser)
        parser.add_argument("--results_dir", type=Path, default=Path("results"),
                            help="metrics and pages go to <results_dir>/<name>/<phase>_<epoch>/")
        parser.add_argument("--split", type=str, default="val", choices=("train", "val"), help="which split to test")
        parser.add_argument("--num_test", type=positive_int, default=None, help="test at most this many samples")
        parser.set_defaults(batch_size=1)
        return parser
