"""Head-motion calibration (models/runtime/motion.py): written by train.py, applied by the runtime."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

import train
from datasets.audiovisual_dataset import load_clip
from datasets.identity import IdentityFiles, config_path, load_config
from models.networks import NETWORKS
from models.runtime.motion import GAIN_RANGE, SIGMAS, rotation_speed, sample_clip_poses
from models.runtime.settings import runtime_settings
from models.runtime.streams import PoseStream
from util.checkpoint import load_network
from util.errors import InputError
from util.geometry import normalise_pose

from tests.test_train import train_args


def runtime_poses(net, settings, clip, seed):
    """What the runtime samples for a clip with the identity's settings (calibration applied)."""
    stream = PoseStream(net, settings, np.zeros(3), seed, settings.sigma_scale, torch.device("cpu"))
    pairs = torch.from_numpy(clip["apc"].astype(np.float32))
    rot, trans, _ = stream.push(pairs)
    rot2, trans2, _ = stream.push(pairs[-1:].repeat(settings.frame_future + 1, 1), limit=len(pairs))
    return normalise_pose(np.concatenate([rot, rot2]), np.concatenate([trans, trans2]), np.zeros(3))


def test_training_calibrates_the_motion_the_runtime_then_samples(identity, tmp_path):
    cfg_dir = tmp_path / "config"
    cfg_dir.mkdir()
    (cfg_dir / "syn.yaml").write_text(f"# mine\nfps: 60\ndataset_params:\n  root: {identity}/\n")
    args = train_args(identity, tmp_path, "audio2headpose", "--config_dir", str(cfg_dir), "--max_iters", "4")
    assert train.cli(args) == 0
    cfg = load_config("syn", cfg_dir)
    assert (cfg_dir / "syn.yaml").read_text().startswith("# mine")
    hp = cfg["model_params"]["Headpose"]
    assert hp["sigma"] in SIGMAS and len(hp["motion_gain"]) == 6 and len(hp["motion_offset"]) == 6
    net_cls, config_cls = NETWORKS["Audio2Headpose"]
    net, _, meta = load_network(config_path(cfg, ("model_params", "Headpose", "ckp_path")), "Audio2Headpose",
                                net_cls, config_cls, config_cls(), "a2h")
    settings = runtime_settings(cfg, {}, meta)
    clips = [load_clip(IdentityFiles(identity), n, 60) for n in IdentityFiles(identity).clips("train")]
    real = np.concatenate([c["pose"][:, :6] for c in clips])
    ours = [runtime_poses(net, settings.pose, c, seed) for seed in (0, 1) for c in clips]
    gain, offset = np.asarray(hp["motion_gain"]), np.asarray(hp["motion_offset"])
    plain = [sample_clip_poses(net, settings.pose, c["apc"], hp["sigma"], seed, torch.device("cpu"))
             for seed in (0, 1) for c in clips]
    for p, o in zip(plain, ours):  # the runtime applies exactly what was calibrated (smoothing is linear)
        np.testing.assert_allclose(o, p * gain + offset, atol=1e-6)
    free = (gain > GAIN_RANGE[0]) & (gain < GAIN_RANGE[1])
    ratio = np.concatenate(ours).std(0) / real.std(0)
    np.testing.assert_allclose(ratio[free], 1.0, rtol=1e-3)  # unclipped gains: the tracked spread (config: 4 decimals)
    np.testing.assert_allclose(np.concatenate(ours).mean(0)[free], real.mean(0)[free], atol=1e-3)
    # the chosen sigma's speed is the closest to the tracked one among those tried
    def speed_miss(sigma):
        sampled = [sample_clip_poses(net, settings.pose, c["apc"], sigma, s, torch.device("cpu"))
                   for s in (0, 1) for c in clips]
        g = np.clip(real.std(0) / np.concatenate(sampled).std(0), *GAIN_RANGE)
        return abs(np.log(rotation_speed([p * g for p in sampled], 60) / rotation_speed([c["pose"] for c in clips], 60)))
    chosen = speed_miss(hp["sigma"])
    assert all(chosen <= speed_miss(s) + 1e-9 for s in (min(SIGMAS), max(SIGMAS)))


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
