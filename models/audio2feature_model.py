"""Audio2Feature training: APC feature windows -> 25 mouth-point displacements, L2 with delay (LSP §4.1).

The prediction for frame t is the LSTM output at step t + frame_future (18 frames = 300 ms of
lookahead), so the loss compares pred[:, d:] with target[:, :-d], scaled by 1000 as the original.

Distillation (--teacher_ckpts, not in the release): beside each batch of the identity's windows, windows of
other speakers' speech (--distill_speech, default the bundled LibriSpeech), encoded as the runtime encodes
them, with the averaged output of the given trained mouth models as targets. One minute of video teaches a
mouth model little speech; the teachers' average on twelve minutes of other voices teaches it more. On the
example, a model fine-tuned this way from one of three seeds' models for 150 iterations read a held-out
opening correlation of 0.71 against 0.69 for the three averaged and 0.62 for that model alone.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from datasets.audiovisual_dataset import WindowSpec
from models.base_audio_model import BaseAudioModel
from models.networks import Audio2FeatureConfig, Audio2FeatureNet
from util.argtypes import non_negative_int, positive_float, positive_int
from util.errors import InputError
from util.landmarks import MOUTH
from util.visualizer import curves_image

L2_SCALE = 1000.0  # LSP §4.1: MSE x 1000
DISTILL_WARMUP = 30  # first frames of a speech window left out of its loss: the teachers saw the utterance
# before them, the window's network did not
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
        parser.add_argument("--teacher_ckpts", type=Path, nargs="+", default=None,
                            help="trained mouth-model checkpoints of this identity whose averaged output on "
                                 "--distill_speech this run learns as well (distillation; see the module doc)")
        parser.add_argument("--distill_speech", type=Path, default=None,
                            help="folder (or file) of other speakers' speech for --teacher_ckpts; default the "
                                 "bundled LibriSpeech, data/example_src/speech")
        parser.add_argument("--distill_seconds", type=positive_float, default=720.0,
                            help="seconds of --distill_speech used (its first files, sorted)")
        parser.add_argument("--distill_batch", type=positive_int, default=16,
                            help="windows of --distill_speech per batch, beside --batch_size of the identity's")
        parser.set_defaults(frame_jump_stride=4)
        return parser

    def __init__(self, opt: argparse.Namespace) -> None:
        super().__init__(opt)
        self.loss_names = ["L2"]
        self.visual_names = ["mouth_opening"]
        cfg = Audio2FeatureConfig(apc_dim=self.apc_dim, hidden_size=opt.a2f_hidden_size,
                                  lstm_hidden_size=opt.lstm_hidden_size, lstm_layers=opt.lstm_layers)
        self.add_network("Audio2Feature", Audio2FeatureNet(cfg))
        self.speech = SpeechTargets(opt, self.apc_dim, self.device) if self.is_train and opt.teacher_ckpts else None
        if self.speech is not None:
            self.loss_names.append("L2_teacher")

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

    def optimize_parameters(self) -> None:
        if self.speech is None:
            return self.step_single_optimizer()
        optimizer = self.optimizers[0]
        optimizer.zero_grad(set_to_none=True)
        apc, target = self.speech.sample(self.opt.distill_batch)
        b, n = len(self.audio_feats), len(apc)
        with torch.autocast(self.device.type, enabled=self.use_amp):
            pred, _ = self.netAudio2Feature(torch.cat([self.audio_feats, apc.to(self.device)]))  # one pass (DDP)
        self.pred = pred[:b]
        w = DISTILL_WARMUP
        self.loss_L2_teacher = F.mse_loss(pred[b:, w:].float(), target[:, w:].to(self.device)) * L2_SCALE
        self.backward_step((self.compute_loss() * b + self.loss_L2_teacher * n) / (b + n), optimizer)
        self.scaler.update()

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


class SpeechTargets:
    """--teacher_ckpts' targets: other speakers' speech (--distill_speech) as the runtime encodes it (the
    identity's APC encoder and feature database, config/<id>.yaml) with the teachers' averaged output on it,
    from which `sample` draws windows of --sequence_length frames."""

    def __init__(self, opt: argparse.Namespace, apc_dim: int, device: torch.device) -> None:
        from tqdm import tqdm

        from datasets.identity import load_config
        from models.runtime.motion import BUNDLED_SPEECH, speech_files, speech_pairs
        from models.runtime.pipeline import load_mouth_encoder

        paths = list(opt.teacher_ckpts)
        encoder, teacher, meta = load_mouth_encoder(load_config(Path(opt.dataroot).name, opt.config_dir), paths,
                                                    device)
        teacher.eval()
        if meta.get("frame_future") != opt.frame_future or teacher.cfg.apc_dim != apc_dim:
            raise InputError(f"--teacher_ckpts {paths[0]}: trained with --frame_future {meta.get('frame_future')} "
                             f"on {teacher.cfg.apc_dim}-d APC features, but this run has --frame_future "
                             f"{opt.frame_future} and {apc_dim}-d features; teachers must match the student")
        self.length = opt.sequence_length
        self.items: list[tuple[torch.Tensor, torch.Tensor]] = []  # (frames, 2 * d) inputs, (frames, 75) targets
        speech = speech_files(opt.distill_speech or BUNDLED_SPEECH, opt.distill_seconds, "--distill_speech")
        with torch.no_grad():
            for audio in tqdm(speech, desc="teacher targets", unit="file"):
                pairs = torch.from_numpy(speech_pairs(encoder, audio)).float()
                if len(pairs) >= self.length:
                    out, _ = teacher(pairs.reshape(1, 2 * len(pairs), -1).to(device))
                    self.items.append((pairs, out[0].float().cpu()))
        if not self.items:
            raise InputError(f"--distill_speech {opt.distill_speech or BUNDLED_SPEECH}: no file of at least "
                             f"{self.length} frames (--sequence_length) at {opt.fps:g} fps")

    def sample(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """n random windows: inputs (n, 2 * length, apc_dim) and targets (n, length, 75), on the CPU."""
        xs, ys = [], []
        for i in torch.randint(len(self.items), (n,)).tolist():
            pairs, target = self.items[i]
            start = int(torch.randint(len(pairs) - self.length + 1, ()))
            xs.append(pairs[start : start + self.length].reshape(2 * self.length, -1))
            ys.append(target[start : start + self.length])
        return torch.stack(xs), torch.stack(ys)
