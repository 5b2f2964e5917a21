"""The BaseModel contract on every stage model: one optimisation step on tiny random data."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
import torch

from models.base_model import BaseModel
from options.train_options import TrainOptions
from util import registry


def make_opt(model: str, tmp_path, *extra: str) -> argparse.Namespace:
    """Training options of `model` without a dataset: base flags + the model's own hook."""
    parser = TrainOptions().initialize(argparse.ArgumentParser())
    parser = registry.find("model", model).modify_commandline_options(parser, True)
    opt = parser.parse_args(["--model", model, "--checkpoints_dir", str(tmp_path), "--name", "t", "--gpu_ids", "-1",
                             *extra])
    opt.is_train, opt.gpu_ids, opt.phase = True, [], "train"
    return opt


def tiny_batch(model: str) -> dict:
    g = torch.Generator().manual_seed(0)
    if model == "apc":
        return {"mel": torch.rand(2, 40, 80, generator=g)}
    if model == "audio2feature":
        return {"audio_feats": torch.randn(2, 2 * 30, 512, generator=g), "mouth": torch.randn(2, 30, 75, generator=g)}
    if model == "audio2headpose":
        rf, t = 255, 8
        return {"audio_feats": torch.randn(2, 2 * (rf + t - 1), 512, generator=g),
                "history": torch.randn(2, rf + t - 1, 12, generator=g), "target": torch.randn(2, t, 12, generator=g)}
    return {"feature_map": (torch.rand(1, 1, 64, 64, generator=g) > 0.9).float(),
            "candidates": torch.rand(1, 12, 64, 64, generator=g) * 2 - 1,
            "image": torch.rand(1, 3, 64, 64, generator=g) * 2 - 1, "mouth_box": torch.tensor([[20, 36, 44, 60]])}


EXTRA = {"feature2face": ["--ngf", "8", "--num_downs", "5", "--ndf", "8", "--no_vgg"],
         "audio2feature": ["--frame_future", "5", "--apc_hidden_size", "512"],
         "audio2headpose": ["--apc_hidden_size", "512"]}


@pytest.mark.parametrize("name", registry.available("model"))
def test_one_step_changes_weights_and_reports(name, tmp_path):
    model = registry.find("model", name)(make_opt(name, tmp_path, *EXTRA.get(name, [])))
    assert isinstance(model, BaseModel)
    model.setup()
    before = {k: v.clone() for net in model.networks().values() for k, v in net.state_dict().items()}
    model.set_input(tiny_batch(name))
    model.optimize_parameters()
    losses = model.get_current_losses()
    assert losses and all(torch.isfinite(torch.tensor(v)) for v in losses.values())
    after = {k: v for net in model.networks().values() for k, v in net.state_dict().items()}
    assert any(not torch.equal(before[k], after[k]) for k in before if after[k].is_floating_point())
    model.compute_visuals()
    visuals = model.get_current_visuals()
    assert set(visuals) == set(model.visual_names)
    assert all(v.ndim == 4 and v.shape[1] in (1, 3) for v in visuals.values())
    assert set(model.current_metrics()) and all(np.isfinite(v) for v in model.current_metrics().values())


def test_setup_rejects_undeclared_network(tmp_path):
    model = registry.find("model", "apc")(make_opt("apc", tmp_path))
    model.model_names.append("Missing")
    with pytest.raises(AttributeError, match="netMissing|Missing"):
        model.setup()


def test_unknown_model_lists_available():
    with pytest.raises(ValueError, match="unknown --model 'nope'; available: apc, audio2feature"):
        registry.find("model", "nope")


@pytest.mark.parametrize("name,prefix", [("audio2feature", "module."), ("feature2face", "module.netG.")])
def test_init_weights_from_a_release_file_or_ours(name, prefix, tmp_path):
    from util.checkpoint import save_network
    from util.errors import InputError

    def build(*extra: str):
        return registry.find("model", name)(make_opt(name, tmp_path, *EXTRA.get(name, []), *extra))

    source = build()
    net = source.networks()[source.model_names[0]]
    release = tmp_path / "release.pkl"  # a raw state dict with the release's key prefix
    torch.save({prefix + k: v for k, v in net.state_dict().items()}, release)
    ours = tmp_path / "ours.pth"
    save_network(ours, net, source.model_names[0], net.cfg)
    for path in (release, ours):
        model = build("--init_weights", str(path))
        model.setup()
        loaded = model.networks()[model.model_names[0]].state_dict()
        assert all(torch.equal(loaded[k], v) for k, v in net.state_dict().items())
    torch.save({prefix + k: v for k, v in list(net.state_dict().items())[1:]}, release)
    model = build("--init_weights", str(release))
    with pytest.raises(InputError, match="--init_weights"):
        model.setup()


def test_mouth_weighted_loss_counts_only_the_mouth_box():
    from models.feature2face_model import masked_l1, mouth_mask

    mask = mouth_mask(torch.tensor([[2, 1, 5, 3]]), (6, 8))  # x 2..4, y 1..2
    assert mask.shape == (1, 1, 6, 8) and mask.sum() == 6 and mask[0, 0, 1, 2] == 1 and mask[0, 0, 3, 2] == 0
    real = torch.zeros(1, 3, 6, 8)
    fake = real.clone()
    fake[..., 0, :] = 5.0  # wrong outside the box only
    assert masked_l1(fake, real, mask) == 0
    fake[..., 2, 3] = 1.0  # one wrong pixel of the six in the box
    assert masked_l1(fake, real, mask) == pytest.approx(1 / 6)


def test_mouth_gradient_loss_sees_edges_not_offsets():
    from models.feature2face_model import masked_gradient_l1, mouth_mask

    mask = mouth_mask(torch.tensor([[1, 1, 7, 7]]), (8, 8))  # a 6 x 6 box
    real = torch.zeros(1, 3, 8, 8)
    real[..., :, 4:] = 1.0  # a vertical edge inside the box
    assert masked_gradient_l1(real + 0.3, real, mask) == pytest.approx(0, abs=1e-6)  # same edges
    outside = real.clone()
    outside[..., 0, :] = -1.0  # wrong on the first row, outside the box only
    assert masked_gradient_l1(outside, real, mask) == 0
    blurred = real.clone()
    blurred[..., :, 3:5] = 0.5  # the edge spread over two steps
    # 5 horizontal differences per row in the box: 0, 0.5 (real 0), 0 (real 1), 0.5 (real 0), 0
    assert masked_gradient_l1(blurred, real, mask) == pytest.approx((0.5 + 1 + 0.5) / 5)
