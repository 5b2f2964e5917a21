"""Audio2Feature training: APC feature windows -> 25 mouth-point displacements, L2 with delay (LSP §4.1).

The prediction for frame t is the LSTM output at step t + frame_future (18 frames = 300 ms of
lookahead), so the loss compares pred[:, d:] with target[:, :-d], scaled by 1000 as the original.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from datasets.audiovisual_dataset import WindowSpec, identity_apc_dim
from models.base_model import BaseModel
from models.networks import Audio2FeatureConfig, Audio2FeatureNet
from util.argtypes import non_negative_int, positive_int
from util.landmarks import MOUTH
from util.visualizer import curves_image

L2_SCALE = 1000.0  # LSP §4.1: MSE x 1000
UPPER_MID, LOWER_MID = MOUTH.index(62), MOUTH.index(59)  # inner-lip mid points, for the opening visual


class Audio2FeatureModel(BaseModel):
    default_dataset_mode = "audiovisual"
    best_metric = ("mouth_lmd", "min")

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--apc_hidden_size", type=non_negative_int, default=0,
                            help="APC feature size; 0 = the size of the identity's APC features")
        parser.add_argument("--a2f_hidden_size", type=positive_int, default=512, help="MLP width around the LSTM")
        parser.add_argument("--lstm_hidden_size", type=positive_int, default=256, help="LSTM width")
        parser.add_argument("--lstm_layers", type=positive_int, default=3, help="LSTM layers")
        parser.add_argument("--frame_future", type=non_negative_int, default=18,
                            help="mouth lookahead d in frames: the output for frame t is read at step t + d")
        parser.add_argument("--sequence_length", type=positive_int, default=240, help="frames per training window")
        parser.set_defaults(frame_jump_stride=4, batch_size=32, lr=1e-4, beta1=0.9, beta2=0.99, lr_policy="step",
                            lr_decay_iters=250,
                            lr_gamma=0.2, n_epochs=500, n_epochs_decay=0, val_freq=10)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.loss_names = ["L2"]
        self.visual_names = ["mouth_opening"]
        self.model_names = ["Audio2Feature"]
        self.apc_dim = opt.apc_hidden_size or identity_apc_dim(opt)
        cfg = Audio2FeatureConfig(apc_dim=self.apc_dim, hidden_size=opt.a2f_hidden_size,
                                  lstm_hidden_size=opt.lstm_hidden_size, lstm_layers=opt.lstm_layers)
        self.netAudio2Feature = Audio2FeatureNet(cfg).to(self.device)
        if self.is_train:
            self.optimizers = [torch.optim.Adam(self.netAudio2Feature.parameters(), lr=opt.lr,
                                                betas=(opt.beta1, opt.beta2))]

    def network_meta(self) -> dict:
        return {"frame_future": self.opt.frame_future, "fps": self.opt.fps}

    def data_spec(self) -> WindowSpec:
        return WindowSpec(length=self.opt.sequence_length, apc_dim=self.apc_dim)

    def set_input(self, batch: dict) -> None:
        self.audio_feats = batch["audio_feats"].to(self.device)  # (B, 2T, 512)
        self.target = batch["mouth"].to(self.device)  # (B, T, 75) displacements from the mean shape

    def forward(self) -> None:
        self.pred, _ = self.netAudio2Feature(self.audio_feats)  # (B, T, 75)

    def aligned(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Prediction at step t + d against the target of frame t: (B, T - d, 75) twice."""
        d = self.opt.frame_future
        return (self.pred[:, d:], self.target[:, :-d]) if d > 0 else (self.pred, self.target)

    def compute_loss(self) -> torch.Tensor:
        pred, target = self.aligned()
        self.loss_L2 = F.mse_loss(pred.float(), target) * L2_SCALE
        return self.loss_L2

    def compute_visuals(self) -> None:
        pred, target = self.aligned()
        opening = [(x[0, :, 3 * UPPER_MID + 1] - x[0, :, 3 * LOWER_MID + 1]).detach().cpu().numpy()
                   for x in (pred, target)]
        self.mouth_opening = curves_image({"predicted": opening[0], "tracked": opening[1]}, "mouth opening")

    @torch.no_grad()
    def current_metrics(self) -> dict[str, float]:
        """Mouth landmark distance (mean over the 25 points, landmark units) and the L2 loss."""
        pred, target = self.aligned()
        dist = (pred.float() - target).reshape(*pred.shape[:2], -1, 3).norm(dim=-1).mean()
        return {"mouth_lmd": float(dist), "L2": float(self.compute_loss().detach())}

    def optimize_parameters(self) -> None:
        self.step_single_optimizer()
