"""BaseOptions: the flags train.py and test.py share, and pix2pix's two-pass parse.

Pass 1 reads --model and --dataset_mode; pass 2 lets the chosen model class and dataset class add
their own flags (`modify_commandline_options(parser, is_train)`), then parses everything. Both names
come from one registry (util/registry.py), so --help lists them and a wrong one is an error.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from options.common import format_options, log_non_defaults, save_options
from util import registry
from util.argtypes import ArgumentParser, non_negative_int, positive_float, positive_int, seed
from util.distributed import world_info


class BaseOptions:
    """Options shared by training and testing; subclasses set `is_train` and add their own flags."""

    is_train = False
    phase = "test"

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        """Flags of every model (pix2pix's names and meanings)."""
        models, datasets = registry.available("model"), registry.available("dataset")
        parser.add_argument("--dataroot", type=str, default=None,
                            help="data: an identity folder (data/<id>) for the three stages; folder(s) of speech "
                                 "audio for apc, several separated by commas")
        parser.add_argument("--name", type=str, default="experiment_name",
                            help="name of the experiment: checkpoints go to <checkpoints_dir>/<name>")
        parser.add_argument("--gpu_ids", type=str, default="0" if torch.cuda.is_available() else "-1",
                            help="GPU ids, e.g. 0 or 0,1; -1 for CPU (default: 0 when a GPU is present)")
        parser.add_argument("--checkpoints_dir", type=Path, default=Path("checkpoints"), help="models are saved here")
        parser.add_argument("--model", type=str, default="audio2feature", choices=models, help="which stage to run")
        parser.add_argument("--dataset_mode", type=str, default=None, choices=datasets or None,
                            help="how data is read (default: the model's own)")
        parser.add_argument("--num_threads", type=non_negative_int, default=2, help="data-loading worker processes")
        parser.add_argument("--batch_size", type=positive_int, default=32, help="input batch size")
        parser.add_argument("--serial_batches", action="store_true", help="take samples in order, without shuffling")
        parser.add_argument("--max_dataset_size", type=positive_int, default=None,
                            help="use at most this many samples (default: all)")
        parser.add_argument("--epoch", type=str, default="latest",
                            help="which checkpoint to load: latest, best, or an epoch number")
        parser.add_argument("--seed", type=seed, default=0, help="seed of every random generator")
        parser.add_argument("--fps", type=positive_float, default=60.0,
                            help="model rate of the audio stages: tracks and audio windows (preprocess.py --fps)")
        parser.add_argument("--verbose", action="store_true", help="print network architectures and more logging")
        parser.add_argument("--suffix", type=str, default="",
                            help="customized suffix: opt.name = opt.name + suffix, e.g. {model}_{batch_size}")
        parser.add_argument("--dry_run", action="store_true", help="print the resolved options and exit")
        return parser

    def _add_class_options(self, parser: argparse.ArgumentParser, args: list[str]) -> None:
        """Pass 1 picks the model and dataset; their hooks add flags, the dataset's first so that the
        model's set_defaults can tune dataset flags (e.g. --frame_jump_stride)."""
        opt, _ = parser.parse_known_args(args)
        model_cls = registry.find("model", opt.model)
        dataset_mode = opt.dataset_mode or getattr(model_cls, "default_dataset_mode", None)
        if dataset_mode:
            registry.find("dataset", dataset_mode).modify_commandline_options(parser, self.is_train)
        model_cls.modify_commandline_options(parser, self.is_train)

    def gather_options(self, args: list[str] | None = None) -> tuple[argparse.Namespace, argparse.ArgumentParser]:
        args = sys.argv[1:] if args is None else list(args)
        parser = self.initialize(ArgumentParser(prog=f"{self.phase}.py", add_help=False,
                                                description=f"Live Speech Portraits {self.phase}",
                                                formatter_class=argparse.ArgumentDefaultsHelpFormatter))
        try:
            self._add_class_options(parser, args)
        except ValueError as err:
            parser.error(str(err))
        # --help only now, so that it lists the chosen model's and dataset's own flags too
        parser.add_argument("-h", "--help", action="help", help="show this help message and exit")
        return parser.parse_args(args), parser

    def validate(self, opt: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
        """Derived fields, set once: is_train, phase, gpu_ids as a list, the dataset mode, the full name."""
        opt.is_train = self.is_train
        opt.phase = self.phase
        try:
            opt.gpu_ids = [int(g) for g in str(opt.gpu_ids).split(",") if g.strip() and int(g) >= 0]
        except ValueError:
            parser.error(f"argument --gpu_ids: expected comma-separated integers, got '{opt.gpu_ids}'")
        if opt.gpu_ids and not torch.cuda.is_available():
            parser.error(f"argument --gpu_ids: {opt.gpu_ids} asked for, but no CUDA GPU is available; use --gpu_ids -1")
        if opt.dataset_mode is None:
            opt.dataset_mode = getattr(registry.find("model", opt.model), "default_dataset_mode", None)
        if opt.suffix:
            try:
                opt.name = opt.name + "_" + opt.suffix.format(**vars(opt))
            except (KeyError, IndexError, ValueError, AttributeError) as err:
                parser.error(f"argument --suffix: '{opt.suffix}' names an unknown or broken option field ({err})")
        return opt

    def parse(self, args: list[str] | None = None, save: bool = True) -> argparse.Namespace:
        """Parse, validate, log the non-defaults and save <phase>_opt.txt and opt.json in the run folder."""
        opt, parser = self.gather_options(args)
        if not opt.dry_run:
            log_non_defaults(opt, parser)
        opt = self.validate(opt, parser)
        self.parser = parser
        if opt.dry_run:
            print(format_options(opt, parser))
            return opt
        if save and world_info()[0] == 0:
            save_options(opt, parser, Path(opt.checkpoints_dir) / opt.name, opt.phase)
        return opt
