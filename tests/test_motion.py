"""Head-motion calibration (models/runtime/motion.py): written by train.py, applied by the runtime."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest
import torch
from conftest import trainable_identity

import train
from datasets.audiovisual_dataset import load_clip
from datasets.identity import IdentityFiles, load_config, set_config_value
from models.runtime import motion
from models.runtime.motion import (
    GAIN_RANGE,
    NOISE_CORRELATION_SECONDS,
    ROT_SMOOTH_SECONDS,
    SEEDS,
    SIGMAS,
    is_calibrated,
    rotation_speed,
    sample_clip_poses,
    speech_files,
    speech_pairs,
)
from models.runtime.pipeline import load_audio_side
from models.runtime.settings import runtime_settings
from models.runtime.streams import PoseStream
from models.synthetic import make_identity, write_training_clips
from util.errors import InputError
from util.geometry import normalise_pose


def runtime_poses(net, settings, pairs, seed):
    """What the runtime samples for APC pairs with the identity's settings (calibration applied)."""
    stream = PoseStream(net, settings, np.zeros(3), seed, settings.sigma_scale, torch.device("cpu"))
    pairs = torch.from_numpy(pairs.astype(np.float32))
    rot, trans, _ = stream.push(pairs)
    rot2, trans2, _ = stream.finish(pairs[-1:], len(pairs))
    return normalise_pose(np.concatenate([rot, rot2]), np.concatenate([trans, trans2]), np.zeros(3))


def test_training_calibrates_the_motion_the_runtime_then_samples(tmp_path):
    config_dir, root, speech = trainable_identity(tmp_path)
    args = ["--model", "audio2headpose", "--dataroot", str(root), "--checkpoints_dir", str(tmp_path / "ckpt"),
            "--name", "a2h", "--num_threads", "0", "--seed", "1", "--time_frame_length", "12", "--batch_size", "4",
            "--frame_jump_stride", "7", "--max_iters", "4", "--config_dir", str(config_dir),
            "--motion_speech", str(speech)]
    assert train.cli(args) == 0
    cfg = load_config("syn", config_dir)
    hp = cfg["model_params"]["Headpose"]
    assert hp["sigma"] in SIGMAS and len(hp["motion_gain"]) == 6 and len(hp["motion_offset"]) == 6
    assert any(abs(hp["smooth"][0] - t * 60) < 1e-9 for t in ROT_SMOOTH_SECONDS)
    assert hp["noise_correlation"] == pytest.approx(NOISE_CORRELATION_SECONDS * 60, abs=1e-4)
    side = load_audio_side(cfg, torch.device("cpu"))
    assert side.settings.pose.motion_gain == tuple(hp["motion_gain"])
    assert side.settings.pose.noise_correlation == hp["noise_correlation"]
    clips = [load_clip(IdentityFiles(root), n, 60) for n in IdentityFiles(root).clips("train")]
    # the two kinds of speech: another speaker's, and the person's own training audio
    sets = [[speech_pairs(side.encoder, a) for a in speech_files(speech)], [c["apc"] for c in clips]]
    ours = [[runtime_poses(side.pose_net, side.settings.pose, p, seed) for seed in SEEDS for p in g] for g in sets]
    plain = [[sample_clip_poses(side.pose_net, side.settings.pose, p, hp["sigma"], seed, torch.device("cpu"))
              for seed in SEEDS for p in g] for g in sets]
    gain, offset = np.asarray(hp["motion_gain"]), np.asarray(hp["motion_offset"])
    for p, o in zip(itertools.chain(*plain), itertools.chain(*ours)):  # the runtime applies exactly what was calibrated
        np.testing.assert_allclose(o, p * gain + offset, atol=1e-6)  # (smoothing is linear)
    real = np.concatenate([c["pose"][:, :6] for c in clips])
    free = (gain > GAIN_RANGE[0]) & (gain < GAIN_RANGE[1])
    ratios = np.array([np.concatenate(g).std(0) / np.maximum(real.std(0), 1e-12) for g in ours])
    assert not np.allclose(ratios[0], ratios[1], rtol=1e-2)  # the two kinds differ: the mean below is not trivial
    np.testing.assert_allclose(np.exp(np.log(ratios).mean(0))[free], 1.0, rtol=1e-3)  # their geometric mean: the
    # tracked spread, for the unclipped gains (4 decimals)
    np.testing.assert_allclose(np.mean([np.concatenate(g).mean(0) for g in ours], 0), real.mean(0), atol=1e-3)
    # the chosen sigma's calibrated speed is the closest to the tracked one among those tried
    real_speed = rotation_speed([c["pose"] for c in clips], 60)

    def speed_miss(sigma):
        sampled = [[sample_clip_poses(side.pose_net, side.settings.pose, p, sigma, s, torch.device("cpu"))
                    for s in SEEDS for p in g] for g in sets]
        spread = np.exp(np.mean([np.log(np.concatenate(g).std(0)) for g in sampled], 0))
        gains = np.clip(real.std(0) / spread, *GAIN_RANGE)
        speeds = [rotation_speed([q * gains for q in g], 60) for g in sampled]
        return abs(np.log(np.exp(np.mean(np.log(speeds))) / real_speed))

    chosen = speed_miss(hp["sigma"])
    assert all(chosen <= speed_miss(s) + 1e-9 for s in (min(SIGMAS), max(SIGMAS)))


def test_a_reused_run_is_calibrated_again_only_when_its_config_moved(tmp_path, monkeypatch):
    from options.train_options import TrainOptions

    config_dir = make_identity(tmp_path, "syn")
    root = tmp_path / "data" / "syn"
    write_training_clips(root)
    args = ["--model", "audio2headpose", "--dataroot", str(root), "--checkpoints_dir", str(tmp_path / "ckpt"),
            "--name", "a2h", "--num_threads", "0", "--time_frame_length", "12", "--batch_size", "4",
            "--frame_jump_stride", "7", "--max_iters", "2", "--config_dir", str(config_dir), "--motion_calibration",
            "off"]
    result = train.cli(args)
    assert result == 0 and not is_calibrated(config_dir / "syn.yaml")
    opt = TrainOptions().parse([*args[:-2], "--continue_train"], save=False)
    calls = []
    monkeypatch.setattr(motion, "calibrate_identity", lambda identity, *a, **k: calls.append(identity))

    def reuse():
        train.point_identity_at_run(opt, None, {"frame_future": opt.frame_future}, retrained=False)

    reuse()
    assert calls == ["syn"]  # trained without a calibration: calibrated now
    set_config_value(config_dir, "syn", ("model_params", "Headpose", "motion_gain"), [1.0] * 6)
    reuse()
    assert calls == ["syn"]  # pointed at this run and calibrated: nothing to redo
    pointed = load_config("syn", config_dir)["model_params"]["Headpose"]["ckp_path"]
    set_config_value(config_dir, "syn", ("model_params", "Headpose", "ckp_path"), "checkpoints/other/a.pth")
    reuse()
    assert calls == ["syn", "syn"]  # the config pointed at another network: pointed back and calibrated again
    assert load_config("syn", config_dir)["model_params"]["Headpose"]["ckp_path"] == pointed


def test_no_speech_for_the_calibration_is_one_line(tmp_path):
    with pytest.raises(InputError, match="--motion_speech .*: no audio files"):
        speech_files(tmp_path)


@pytest.mark.parametrize("value", [[1, 2, 3], "big", [1, 1, 1, 1, 1, float("nan")], [1, 1, 1, 1, 1, -1]])
def test_bad_motion_gains_name_the_key(value):
    cfg = load_config("default")
    cfg["model_params"]["Headpose"]["motion_gain"] = value
    with pytest.raises(InputError, match="Headpose.motion_gain must be"):
        runtime_settings(cfg, {}, {})


def test_identity_gain_is_the_plain_pose():
    cfg = load_config("default")
    plain = runtime_settings(cfg, {}, {}).pose
    assert plain.motion_gain == (1.0,) * 6 and plain.motion_offset == (0.0,) * 6
    assert dataclasses.replace(plain) == plain
