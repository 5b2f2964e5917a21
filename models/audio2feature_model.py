"""Audio2Feature training: APC feature windows -> 25 mouth-point displacements, L2 with delay (LSP §4.1).

The prediction for frame t is the LSTM output at step t + frame_future (18 frames = 300 ms of
lookahead), so the loss compares pred[:, d:] with target[:, :-d], scaled by 1000 as the original.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from models.base_model import BaseModel
from models.networks import Audio2FeatureConfig, Audio2FeatureNet
from options.common import positive_int

L2_SCALE = 1000.0  # LSP §4.1: MSE x 1000


class Audio2FeatureModel(BaseModel):
    default_dataset_mode = "audiovisual"

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--apc_hidden_size", type=positive_int, default=512, help="APC feature size")
        parser.add_argument("--a2f_hidden_size", type=positive_int, default=512, help="MLP width around the LSTM")
        parser.add_argument("--lstm_hidden_size", type=positive_int, default=256, help="LSTM width")
        parser.add_argument("--lstm_layers", type=positive_int, default=3, help="LSTM layers")
        parser.add_argument("--frame_future", type=int, default=18,
                            help="mouth lookahead d in frames: the output for frame t is read at step t + d")
        parser.add_argument("--sequence_length", type=positive_int, default=240, help="frames per training window")
        parser.add_argument("--frame_jump_stride", type=positive_int, default=4, help="frames between window starts")
        parser.set_defaults(batch_size=32, lr=1e-4, beta1=0.9, beta2=0.99, lr_policy="step", lr_decay_iters=250,
                            lr_gamma=0.2, n_epochs=500, n_epochs_decay=0, val_freq=10)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.loss_names = ["L2"]
        self.visual_names = ["pred", "target"]
        self.model_names = ["Audio2Feature"]
        cfg = Audio2FeatureConfig(apc_dim=opt.apc_hidden_size, hidden_size=opt.a2f_hidden_size,
                                  lstm_hidden_size=opt.lstm_hidden_size, lstm_layers=opt.lstm_layers)
        self.netAudio2Feature = Audio2FeatureNet(cfg).to(self.device)
        if self.is_train:
            self.optimizers = [torch.optim.Adam(self.netAudio2Feature.parameters(), lr=opt.lr,
                                                betas=(opt.beta1, opt.beta2))]

    def network_meta(self) -> dict:
        return {"frame_future": self.opt.frame_future, "fps": getattr(self.opt, "fps", 60)}

    def set_input(self, batch: dict) -> None:
        self.audio_feats = batch["audio_feats"].to(self.device)  # (B, 2T, 512)
        self.target = batch["target"].to(self.device)  # (B, T, 75)

    def forward(self) -> None:
        self.pred, _ = self.netAudio2Feature(self.audio_feats)  # (B, T, 75)

    def compute_loss(self) -> torch.Tensor:
        d = self.opt.frame_future
        pred, target = (self.pred[:, d:], self.target[:, :-d]) if d > 0 else (self.pred, self.target)
        self.loss_L2 = F.mse_loss(pred.float(), target) * L2_SCALE
        return self.loss_L2

    def optimize_parameters(self) -> None:
        self.step_single_optimizer()
