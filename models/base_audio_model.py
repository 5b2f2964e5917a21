"""What the two audio stages share (LSP §4.1): windows of the identity's APC features as input, the
release's optimisation recipe, one network with one Adam optimiser, and the facts inference needs
(model rate, lookahead) saved with the network."""

from __future__ import annotations

import argparse

import torch

from datasets.audiovisual_dataset import identity_apc_dim
from models.base_model import BaseModel
from util.argtypes import non_negative_int


class BaseAudioModel(BaseModel):
    """Base of audio2feature and audio2headpose: a subclass builds `self.net<Name>` from `apc_dim`."""

    default_dataset_mode = "audiovisual"

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--apc_hidden_size", type=non_negative_int, default=0,
                            help="APC feature size; 0 = the size of the identity's APC features")
        parser.set_defaults(batch_size=32, lr=1e-4, beta1=0.9, beta2=0.99, lr_policy="step", lr_decay_iters=250,
                            lr_gamma=0.2, n_epochs=500, n_epochs_decay=0, val_freq=10)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.apc_dim = opt.apc_hidden_size or identity_apc_dim(opt)

    def add_network(self, name: str, net: torch.nn.Module) -> None:
        """Set `self.net<name>` on the device and, for training, its Adam optimiser."""
        self.model_names = [name]
        setattr(self, "net" + name, net.to(self.device))
        if self.is_train:
            betas = (self.opt.beta1, self.opt.beta2)
            self.optimizers = [torch.optim.Adam(net.parameters(), lr=self.opt.lr, betas=betas)]

    def network_meta(self) -> dict:
        return {"frame_future": self.opt.frame_future, "fps": self.opt.fps}

    def optimize_parameters(self) -> None:
        self.step_single_optimizer()
