"""TrainOptions: pix2pix's training flags (display, saving, schedule) plus resume, validation and AMP."""

from __future__ import annotations

import argparse
from pathlib import Path

from datasets.identity import CONFIG_DIR
from options.base_options import BaseOptions
from util.argtypes import fraction, non_negative_float, non_negative_int, positive_float, positive_int

LR_POLICIES = ("linear", "step", "plateau", "cosine")


class TrainOptions(BaseOptions):
    """`python train.py --model audio2feature --dataroot data/<id> --name <run>`."""

    is_train = True
    phase = "train"

    def initialize(self, parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
        parser = super().initialize(parser)
        # visualisation and logging
        parser.add_argument("--display_freq", type=positive_int, default=400,
                            help="iterations between saving visuals to TensorBoard and the HTML page")
        parser.add_argument("--display_id", type=non_negative_int, default=0,
                            help="visdom window id; 0 disables visdom (its server needs internet for its assets)")
        parser.add_argument("--display_server", type=str, default="http://localhost", help="visdom server")
        parser.add_argument("--display_env", type=str, default="main", help="visdom environment")
        parser.add_argument("--display_port", type=positive_int, default=8097, help="visdom port")
        parser.add_argument("--update_html_freq", type=positive_int, default=1000,
                            help="iterations between adding visuals to the HTML page (at most every --display_freq)")
        parser.add_argument("--print_freq", type=positive_int, default=100,
                            help="iterations between printing losses to the console and loss_log.txt")
        parser.add_argument("--no_html", action="store_true", help="do not write the HTML page of visuals")
        parser.add_argument("--no_tensorboard", action="store_true", help="do not write TensorBoard logs")
        # saving and resuming
        parser.add_argument("--save_latest_freq", type=positive_int, default=5000,
                            help="iterations between saving the latest checkpoint")
        parser.add_argument("--save_epoch_freq", type=positive_int, default=5,
                            help="epochs between keeping an epoch checkpoint")
        parser.add_argument("--save_by_iter", action="store_true",
                            help="every --save_latest_freq iterations also keep a checkpoint iter_<n>")
        parser.add_argument("--continue_train", action="store_true",
                            help="resume from the --epoch checkpoint: weights, optimizers, schedulers, counters, RNG")
        parser.add_argument("--overwrite", action="store_true",
                            help="start a fresh run in a --name folder that holds one, replacing its checkpoints")
        parser.add_argument("--epoch_count", type=positive_int, default=1,
                            help="first epoch number of a fresh run (a resumed run takes it from the checkpoint)")
        # schedule and optimisation
        parser.add_argument("--n_epochs", type=positive_int, default=100, help="epochs at the initial learning rate")
        parser.add_argument("--n_epochs_decay", type=non_negative_int, default=100,
                            help="epochs to decay the learning rate over")
        parser.add_argument("--lr", type=non_negative_float, default=1e-4, help="initial learning rate for Adam")
        parser.add_argument("--beta1", type=non_negative_float, default=0.9, help="Adam beta1")
        parser.add_argument("--beta2", type=non_negative_float, default=0.999, help="Adam beta2")
        parser.add_argument("--lr_policy", type=str, default="linear", choices=LR_POLICIES,
                            help="learning rate schedule: linear (constant for n_epochs, then to 0 over "
                                 "n_epochs_decay), step (x lr_gamma every lr_decay_iters epochs), plateau (x0.2 "
                                 "when the validation metric stalls for 5 validations), cosine (to 0 over n_epochs + "
                                 "n_epochs_decay)")
        parser.add_argument("--lr_decay_iters", type=positive_int, default=50,
                            help="step policy: multiply by --lr_gamma every lr_decay_iters epochs")
        parser.add_argument("--lr_gamma", type=positive_float, default=0.1, help="step policy: decay factor")
        parser.add_argument("--grad_clip", type=non_negative_float, default=0.0, help="clip gradient norm; 0 = off")
        parser.add_argument("--ema_decay", type=fraction, default=0.0,
                            help="keep an exponential moving average of the inference network's weights (e.g. "
                                 "0.98: about the last 50 iterations) and validate, save and deploy it; 0 = off")
        parser.add_argument("--amp", action="store_true", help="mixed precision with torch.amp (CUDA only)")
        # validation
        parser.add_argument("--val_freq", type=positive_int, default=5,
                            help="epochs between validations on the held-out split (best checkpoint kept)")
        parser.add_argument("--max_iters", type=non_negative_int, default=0,
                            help="stop after this many iterations in all (0 = run every epoch); rerun with "
                                 "--continue_train to go on")
        parser.add_argument("--config_dir", type=Path, default=CONFIG_DIR,
                            help="after training, config/<id>.yaml here (id = the --dataroot folder) is pointed "
                                 "at the trained network")
        parser.add_argument("--init_weights", type=Path, default=None,
                            help="start the stage's network (APC, Audio2Feature, Audio2Headpose, or the Feature2Face "
                                 "generator) from these weights to fine-tune: our checkpoint or the authors' "
                                 ".pkl/.model; sizes must match; ignored with --continue_train")
        parser.add_argument("--config_checkpoint", type=str, default="best", choices=("best", "latest"),
                            help="which checkpoint config/<id>.yaml is pointed at after training: the best by "
                                 "validation (when there was one) or the last")
        parser.add_argument("--debug", action="store_true",
                            help="one epoch on 10 samples, printing and displaying every iteration")
        return parser

    def validate(self, opt: argparse.Namespace, parser: argparse.ArgumentParser) -> argparse.Namespace:
        """The base's derived fields; and a fresh run never replaces a finished one's checkpoints silently."""
        opt = super().validate(opt, parser)
        folder = Path(opt.checkpoints_dir) / opt.name
        if not (opt.continue_train or opt.overwrite or opt.dry_run) and folder.is_dir():
            found = sorted(p.name for p in folder.glob("*_state.pth"))
            if found:
                parser.error(f"--name {opt.name}: {folder} already holds a training run ({', '.join(found[:3])}); "
                             "resume it with --continue_train, or start over with --overwrite or another --name")
        return opt
