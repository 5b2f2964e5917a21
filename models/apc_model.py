"""APC pre-training: predict the log-mel frame `time_shift` steps ahead from the GRU outputs (L1).

Autoregressive predictive coding (Chung et al., Interspeech 2019); LSP §4.2.3 gives the upstream
recipe: 3 x GRU 512, L1, Adam 1e-4, batch 32, gradient clipping 1.0. The encoder is shared by every
identity: `<checkpoints_dir>/<name>/latest_net_APC.pth` is what config `APC.ckp_path` points at.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from datasets.identity import IdentityFiles, project_path, set_config_value
from models.base_model import BaseModel
from models.networks import APC, APCConfig
from util.argtypes import non_negative_float, positive_int
from util.audio import LogMel, MelConfig, load_audio
from util.checkpoint import load_network
from util.errors import InputError
from util.io import save_npy, write_json
from util.visualizer import spectrogram_image


class APCModel(BaseModel):
    default_dataset_mode = "audio"
    best_metric = ("L1", "min")
    init_weights_optional = ("postnet.",)  # a released encoder may come without its pre-training postnet

    @staticmethod
    def modify_commandline_options(parser: argparse.ArgumentParser, is_train: bool) -> argparse.ArgumentParser:
        parser.add_argument("--apc_hidden_size", type=positive_int, default=512, help="GRU width")
        parser.add_argument("--apc_layers", type=positive_int, default=3, help="stacked GRU layers")
        parser.add_argument("--apc_residual", action="store_true", help="residual connections between GRU layers")
        parser.add_argument("--apc_dropout", type=non_negative_float, default=0.0, help="dropout between GRU layers")
        parser.add_argument("--time_shift", type=positive_int, default=3,
                            help="predict the mel frame this many steps (1/120 s each) ahead")
        parser.add_argument("--segment_length", type=positive_int, default=480,
                            help="mel frames per training segment (480 = 4 s)")
        parser.set_defaults(batch_size=32, lr=1e-4, lr_policy="step", lr_decay_iters=1000, n_epochs=100,
                            n_epochs_decay=0, grad_clip=1.0, beta1=0.9, beta2=0.999)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.loss_names = ["L1"]
        self.visual_names = ["mel_real", "mel_pred"]
        self.model_names = ["APC"]
        self.netAPC = APC(APCConfig(hidden_size=opt.apc_hidden_size, num_layers=opt.apc_layers,
                                    residual=opt.apc_residual, dropout=opt.apc_dropout)).to(self.device)
        if self.is_train:
            self.optimizers = [torch.optim.Adam(self.netAPC.parameters(), lr=opt.lr, betas=(opt.beta1, opt.beta2))]

    def data_spec(self) -> int:
        """Mel frames per training segment."""
        return self.opt.segment_length

    def network_meta(self) -> dict:
        return {"time_shift": self.opt.time_shift}

    def set_input(self, batch: dict) -> None:
        self.mel = batch["mel"].to(self.device)  # (B, T, 80)

    def forward(self) -> None:
        feats, _ = self.netAPC(self.mel)
        self.pred = self.networks()["APC"].predict(feats)  # (B, T, 80): the frame time_shift steps ahead

    def compute_visuals(self) -> None:
        n = self.opt.time_shift
        self.mel_real = spectrogram_image(self.mel[0, n:])
        self.mel_pred = spectrogram_image(self.pred[0, :-n])

    def current_metrics(self) -> dict[str, float]:
        return {"L1": float(self.compute_loss().detach())}

    def compute_loss(self) -> torch.Tensor:
        n = self.opt.time_shift
        self.loss_L1 = F.l1_loss(self.pred[:, :-n].float(), self.mel[:, n:])
        return self.loss_L1

    def optimize_parameters(self) -> None:
        self.step_single_optimizer()


@torch.no_grad()
def write_apc_features(root: Path, apc_ckpt: Path | None, config_dir: Path, identity: str, meta: dict) -> None:
    """APC features of every clip (clips/<clip>/apc_features.npy, 2 per model frame) and the database of
    the training clips (APC_feature_base.npy); config APC.ckp_path is pointed at the same checkpoint."""
    from tqdm import tqdm

    if apc_ckpt is None:
        raise InputError("--only apc_features needs --apc_ckpt (train one with: python train.py --model apc ...)")
    net, cfg, _ = load_network(apc_ckpt, "APC", APC, APCConfig, APCConfig(), "--apc_ckpt",
                               optional_prefixes=("postnet.",))
    mel = LogMel(MelConfig(fps=float(meta["model_fps"]), n_mels=cfg.mel_dim))
    files = IdentityFiles(root)
    base = []
    for clip in tqdm(meta["clips"], desc="APC features", unit="clip"):
        clip_files = files.clip(clip["name"])
        feats, _ = net(torch.from_numpy(mel(load_audio(clip_files.audio)))[None])
        feats = feats[0].numpy().astype(np.float32)
        save_npy(clip_files.apc_features, feats)
        if clip["split"] == "train":
            base.append(feats)
    save_npy(files.apc_base, np.concatenate(base))
    set_config_value(config_dir, identity, ("model_params", "APC", "ckp_path"), project_path(apc_ckpt))
    meta["apc_checkpoint"] = project_path(apc_ckpt)
    write_json(files.meta, meta)
