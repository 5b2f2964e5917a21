"""Network shapes and parameter counts against the original's state dicts (reference file)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from models.networks import (
    APC,
    Audio2FeatureNet,
    Audio2HeadposeNet,
    Feature2FaceG,
    Feature2FaceGConfig,
    MultiscaleDiscriminator,
)
from models.networks.blocks import STEPWISE_MAX_STEPS, run_lstm
from models.networks.feature2face import SubPixelConv


def shapes(module: torch.nn.Module, prefix: str = "") -> dict[str, tuple[int, ...]]:
    return {prefix + k: tuple(v.shape) for k, v in module.state_dict().items()}


def n_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def check(ours: dict, ref: dict) -> None:
    ref = {k: v for k, v in ref.items() if k != "__params__"}
    assert sorted(set(ref) - set(ours)) == [], "keys missing from our network"
    assert sorted(set(ours) - set(ref)) == [], "keys our network has that the original does not"
    bad = {k: (ours[k], ref[k]) for k in ref if ours[k] != ref[k]}
    assert bad == {}


def test_apc_matches_release(ref_keys):
    net = APC()
    ours = {k: v for k, v in shapes(net).items() if not k.startswith("postnet.")}
    check(ours, ref_keys["APC_encoder"])
    assert n_params(net) - n_params(net.postnet) == ref_keys["APC_encoder"]["__params__"][0] == 4_064_256


def test_audio2feature_matches_release(ref_keys):
    net = Audio2FeatureNet()
    check(shapes(net), ref_keys["Audio2Feature(LSTM)"])
    assert n_params(net) == 3_064_395


def test_audio2headpose_matches_release(ref_keys):
    net = Audio2HeadposeNet()
    check(shapes(net), ref_keys["Audio2Headpose(WaveNet)"])
    assert n_params(net) == 4_266_915
    assert net.receptive_field == 255


@pytest.mark.parametrize("size,input_nc,params", [("large", 13, 121_789_760), ("normal", 13, 76_203_840),
                                                  ("small", 23, 54_434_435)])
def test_feature2face_matches_release(ref_keys, size, input_nc, params):
    net = Feature2FaceG(Feature2FaceGConfig(size=size, input_nc=input_nc))
    check(shapes(net, "netG."), ref_keys[f"Feature2Face_G[{size}]"])
    assert n_params(net) == params


def test_discriminator_matches_intended(ref_keys):
    net = MultiscaleDiscriminator()
    check(shapes(net), ref_keys["MultiscaleD[intended: in=16,num_D=2,intermFeat]"])
    assert n_params(net) == 5_559_682


@pytest.mark.parametrize("size", ["large", "normal", "small"])
def test_generator_forward_small_sizes(size):
    cfg = Feature2FaceGConfig(size=size, ngf=4, num_downs=5)
    net = Feature2FaceG(cfg).eval()
    out = net(torch.randn(2, 13, 64, 64))
    assert out.shape == (2, 3, 64, 64) and out.abs().max() <= 1
    with pytest.raises(ValueError, match="divisible by 32"):
        net(torch.randn(1, 13, 48, 48))


@pytest.mark.parametrize("size", ["large", "normal"])
@torch.no_grad()
def test_inference_form_renders_the_same_frames(size):
    torch.manual_seed(0)
    net = Feature2FaceG(Feature2FaceGConfig(size=size, ngf=4, num_downs=6)).eval()
    for m in net.modules():  # trained-looking statistics, so that every phase of every level matters
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_()
            m.running_var.uniform_(0.5, 2.0)
            m.weight.uniform_(0.5, 1.5)
            m.bias.normal_()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fast = net.for_inference()
    x = torch.randn(2, 13, 128, 64)  # not square: rows and columns are folded separately
    assert (fast(x) - net(x)).abs().max() < 1e-5
    assert not any(isinstance(m, nn.Upsample) for m in fast.modules())
    assert sum(isinstance(m, SubPixelConv) for m in fast.modules()) == 6  # one per level
    norms = [sum(isinstance(m, nn.BatchNorm2d) for m in n.modules()) for n in (net, fast)]
    assert norms[1] == norms[0] - 5  # the BatchNorm after each upsampling conv but the outermost's is folded in
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # the original is untouched


def test_subpixel_conv_refuses_other_convs():
    with pytest.raises(ValueError, match="3x3 conv with stride 1"):
        SubPixelConv(nn.Conv2d(4, 4, 3, stride=2, padding=1))


@torch.no_grad()
def test_run_lstm_by_cells_matches_the_fused_lstm():
    torch.manual_seed(0)
    lstm = nn.LSTM(12, 8, num_layers=3, batch_first=True).eval()
    x = torch.randn(2, 7, 12)
    ref, (h, c) = lstm(x)
    state = None
    outs = []
    for part in x.split([1, 2, 4], 1):  # streamed in hops, the state carried: cell by cell each time
        out, state = run_lstm(lstm, part, state)
        outs.append(out)
    assert torch.allclose(torch.cat(outs, 1), ref, atol=1e-6)
    assert torch.allclose(state[0], h, atol=1e-6) and torch.allclose(state[1], c, atol=1e-6)
    long = torch.randn(1, STEPWISE_MAX_STEPS + 1, 12)  # longer calls take the fused kernel
    assert torch.allclose(run_lstm(lstm, long)[0], lstm(long)[0])


def test_discriminator_forward_scales():
    d = MultiscaleDiscriminator()
    outs = d(torch.randn(1, 16, 64, 64))
    assert len(outs) == 2 and len(outs[0]) == 5
    # k4 s2 p2 convs: 64 px -> 33 at scale 0; the 1/2 scale sees 32 px -> 17.
    assert outs[0][-1].shape[1] == 1 and outs[0][0].shape[-1] == 33 and outs[1][0].shape[-1] == 17
