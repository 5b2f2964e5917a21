"""Forward equality with the authors' own networks: tests/fixtures/lsp_forward_fixture.npz holds their
outputs for weights made by a documented rule (../shared/reference/lsp_forward_fixture.md); ours, given
the same weights and inputs, must give the same outputs (float rounding only)."""

from __future__ import annotations

import math
import zlib

import numpy as np
import pytest
import torch
from conftest import FIXTURES

from models.networks import (
    APC,
    Audio2FeatureNet,
    Audio2HeadposeNet,
    Feature2FaceG,
    Feature2FaceGConfig,
    MultiscaleDiscriminator,
)

TOLERANCE = 1e-4  # float32 rounding of the same operations in another order


@pytest.fixture(scope="module")
def fixture():
    with np.load(FIXTURES / "lsp_forward_fixture.npz") as data:
        return {k: data[k] for k in data.files}


def rule_weight(key: str, shape: tuple[int, ...]) -> torch.Tensor:
    """The fixture's weight for state-dict key `key` (the authors' name) of `shape`."""
    g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
    if key.endswith("num_batches_tracked"):
        return torch.zeros(shape, dtype=torch.int64)
    if key.endswith("running_var"):
        return torch.rand(shape, generator=g) + 0.5
    if key.endswith("running_mean"):
        return torch.randn(shape, generator=g) * 0.1
    if len(shape) == 1 and key.endswith("weight"):
        return 1 + torch.randn(shape, generator=g) * 0.1
    if len(shape) == 1:
        return torch.randn(shape, generator=g) * 0.02
    return torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))


def with_rule_weights(net: torch.nn.Module, prefix: str = "", skip: tuple[str, ...] = ()) -> torch.nn.Module:
    """`net` with every weight made by the rule from the authors' key (`prefix` + ours)."""
    state = {k: rule_weight(prefix + k, tuple(v.shape)) for k, v in net.state_dict().items() if not k.startswith(skip)}
    net.load_state_dict(state, strict=not skip)
    return net.eval()


def renderer_input(fx: dict) -> torch.Tensor:
    """cat(map as float, candidates / 127.5 - 1): (1, 13, 256, 256), as the fixture describes."""
    return torch.cat([torch.from_numpy(fx["f2f_in_map_u8"]).float(),
                      torch.from_numpy(fx["f2f_in_candidates_u8"]).float() / 127.5 - 1], 1)


def assert_close(ours: torch.Tensor, theirs: np.ndarray) -> None:
    assert tuple(ours.shape) == theirs.shape
    assert float((ours - torch.from_numpy(theirs)).abs().max()) < TOLERANCE
    assert float(torch.from_numpy(theirs).abs().max()) > 10 * TOLERANCE  # the outputs are not all ~0


@torch.no_grad()
def test_apc(fixture):
    net = with_rule_weights(APC(), skip=("postnet.",))  # the encoder; the postnet is pre-training only
    assert_close(net(torch.from_numpy(fixture["apc_in_mel"]))[0], fixture["apc_out"])


@torch.no_grad()
def test_audio2feature(fixture):
    net = with_rule_weights(Audio2FeatureNet())
    assert_close(net(torch.from_numpy(fixture["a2f_in"]))[0], fixture["a2f_out"])


@torch.no_grad()
def test_audio2headpose(fixture):
    net = with_rule_weights(Audio2HeadposeNet())
    audio = torch.from_numpy(fixture["a2h_in_audio"])  # (1, 255, 1024) APC pairs
    out = net(audio.reshape(1, -1, 512), torch.from_numpy(fixture["a2h_in_history"]))[:, -1:]
    assert_close(out, fixture["a2h_out"])


@torch.no_grad()
@pytest.mark.parametrize("size", ["normal", pytest.param("large", marks=pytest.mark.slow)])
def test_feature2face(fixture, size):
    net = with_rule_weights(Feature2FaceG(Feature2FaceGConfig(size=size)), prefix="netG.")
    assert_close(net(renderer_input(fixture)), fixture[f"f2f_{size}_out"])
    assert_close(net.for_inference()(renderer_input(fixture)), fixture[f"f2f_{size}_out"])  # what renders


@torch.no_grad()
def test_discriminator(fixture):
    net = with_rule_weights(MultiscaleDiscriminator())
    image = torch.from_numpy(fixture["d_in_image_u8"]).float() / 127.5 - 1
    out = net(torch.cat([renderer_input(fixture), image], 1))
    for scale in range(2):
        assert len(out[scale]) == int(fixture[f"d_out_scale{scale}_nlayers"])
        assert_close(out[scale][-1], fixture[f"d_out_scale{scale}_last"])
