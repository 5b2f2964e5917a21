"""Audio2Feature training: APC feature windows -> 25 mouth-point displacements, L2 with delay (LSP §4.1).

The prediction for frame t is the LSTM output at step t + frame_future (18 frames = 300 ms of
lookahead), so the loss compares pred[:, d:] with target[:, :-d], scaled by 1000 as the original.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

from datasets.audiovisual_dataset import WindowSpec
from models.base_audio_model import BaseAudioModel
from models.networks import Audio2FeatureConfig, Audio2FeatureNet
from util.argtypes import non_negative_int, positive_int
from util.landmarks import MOUTH
from util.visualizer import curves_image

L2_SCALE = 1000.0  # LSP §4.1: MSE x 1000
UPPER_MID, LOWER_MID = MOUTH.index(62), MOUTH.index(59)  # inner-lip mid points, for the opening visual


class Audio2FeatureModel(BaseAudioModel):
    best_metric = ("mouth_lmd", "min")

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser = BaseAudioModel.modify_commandline_options(parser, is_train)
        parser.add_argument("--a2f_hidden_size", type=positive_int, default=512, help="MLP width around the LSTM")
        parser.add_argument("--lstm_hidden_size", type=positive_int, default=256, help="LSTM width")
        parser.add_argument("--lstm_layers", type=positive_int, default=3, help="LSTM layers")
        parser.add_argument("--frame_future", type=non_negative_int, default=18,
                            help="mouth lookahead d in frames: the output for frame t is read at step t + d")
        parser.add_argument("--sequence_length", type=positive_int, default=240, help="frames per training window")
        parser.set_defaults(frame_jump_stride=4)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.loss_names = ["L2"]
        self.visual_names = ["mouth_opening"]
        cfg = Audio2FeatureConfig(apc_dim=self.apc_dim, hidden_size=opt.a2f_hidden_size,
                                  lstm_hidden_size=opt.lstm_hidden_size, lstm_layers=opt.lstm_layers)
        self.add_network("Audio2Feature", Audio2FeatureNet(cfg))

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
