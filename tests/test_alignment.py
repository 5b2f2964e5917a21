"""Training and inference see the same alignment: a training window with teacher forcing and the streaming
path that production runs, given the same audio and the same history, predict the same thing."""

from __future__ import annotations

import numpy as np
import torch
from test_train import STAGE_ARGS

from datasets import create_dataset
from models import create_model
from models.runtime.settings import MouthSettings, PoseSettings
from models.runtime.streams import MouthStream, PoseStream
from options.train_options import TrainOptions


def model_and_window(identity, tmp_path, model: str, *extra: str):
    """The stage model (eval mode) and the first training window of its dataset (starting at frame 0)."""
    opt = TrainOptions().parse(["--model", model, "--dataroot", str(identity), "--checkpoints_dir", str(tmp_path),
                                "--gpu_ids", "-1", "--serial_batches", *STAGE_ARGS[model], *extra], save=False)
    m = create_model(opt)
    m.setup()
    m.eval()
    data = create_dataset(opt, "train", m.data_spec())
    assert data.index[0] == (0, 0)
    return m, data, {k: v[None] for k, v in data[0].items()}


def test_audio2feature_training_window_equals_the_mouth_stream(identity, tmp_path, monkeypatch):
    m, data, batch = model_and_window(identity, tmp_path, "audio2feature")
    m.set_input(batch)
    m.test()
    pred, _ = m.aligned()  # (1, T - d, 75): the prediction of frames 0 .. T - d - 1
    clip = data.clips[0]
    seen = []
    monkeypatch.setattr("models.runtime.streams.mouth_faces", lambda disp, *a: seen.append(disp) or disp)
    settings = MouthSettings(frame_future=m.opt.frame_future, sigma=0.0, smooth_lookahead=0,
                             amp_gains=(1.0, 1.0, 1.0), use_jaw=True)
    stream = MouthStream(m.netAudio2Feature, settings, _assets(), torch.device("cpu"))
    pairs = torch.from_numpy(clip["apc"])  # (N, 2 * 512): the whole clip as it would arrive live
    for a in range(0, len(pairs), 17):
        stream.push(pairs[a : a + 17])
    streamed = np.concatenate(seen).reshape(-1, 75)
    n = pred.shape[1]
    np.testing.assert_allclose(streamed[:n], pred[0].numpy(), atol=1e-5)


def test_audio2headpose_training_window_equals_the_pose_stream(identity, tmp_path, monkeypatch):
    m, data, batch = model_and_window(identity, tmp_path, "audio2headpose", "--a2h_wavenet_residual_channels", "16",
                                      "--a2h_wavenet_dilation_channels", "16", "--a2h_wavenet_skip_channels", "16",
                                      "--a2h_wavenet_cond_channels", "32")
    m.set_input(batch)
    with torch.no_grad():
        m.forward()
    expected = m.out[0].numpy()  # (T, C): the mixture of frames 0 .. T - 1, history teacher-forced
    truth = data.clips[0]["pose"]  # (N, 12): the normalised poses and velocities the model learns
    outs = []

    def teacher_forced(self, out):  # record the prediction, continue from the true pose instead of a sample
        outs.append(out[0].copy())
        self.next_pose += 1
        return truth[self.next_pose - 1].astype(np.float64)

    monkeypatch.setattr(PoseStream, "_sample", teacher_forced)
    settings = PoseSettings(frame_future=m.opt.frame_future, sigma_scale=0.0, rot_gain=1, trans_gain=1, rot_sigma=0,
                            trans_sigma=0, shoulder_gain=0)
    stream = PoseStream(m.netAudio2Headpose, settings, np.zeros(3), 0, 0.0, torch.device("cpu"))
    pairs = torch.from_numpy(data.clips[0]["apc"])
    for a in range(0, len(pairs), 23):
        stream.push(pairs[a : a + 23])
    np.testing.assert_allclose(np.stack(outs)[: len(expected)], expected, atol=1e-4)
    assert len(outs) >= len(expected) and np.abs(expected).max() > 1e-3


def _assets():
    """The identity assets MouthStream needs for its base shape (post-processing is intercepted here)."""
    from types import SimpleNamespace

    return SimpleNamespace(tracked_pts3d=np.zeros((1, 73, 3)))

