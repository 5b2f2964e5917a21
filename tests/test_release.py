"""The authors' release layout runs unchanged: their .pkl/.model key names and shapes (from the
reference key file, random values), their config/<id>.yaml verbatim, and the data/<id>/ file names."""

from __future__ import annotations

import pytest
import torch
from conftest import FIXTURES, reference_keys

import demo
from models.synthetic import write_assets
from util.video import probe

RELEASE_YAML = """model_params:
    APC:
        ckp_path: './data/APC_epoch_160.model'
        mel_dim: 80
        hidden_size: 512
        num_layers: 3
        residual: false
        use_LLE: 1
        Knear: 10
        LLE_percent: 1
    Audio2Mouth:
        ckp_path: './data/{id}/checkpoints/Audio2Feature.pkl'
        smooth: 1.5
        AMP: ['XYZ', 2, 2, 2]  # method, x, y, z
    Headpose:
        ckp_path: './data/{id}/checkpoints/Audio2Headpose.pkl'
        sigma: 0.3
        smooth: [5, 10]    # rot, trans
        AMP: [1, 0.5]    # rot, trans
        shoulder_AMP: 0.5
    Image2Image:
        ckp_path: './data/{id}/checkpoints/Feature2Face.pkl'
        size: '{size}'
        save_input: 1

dataset_params:
  root: './data/{id}/'
  fit_data_path: './data/{id}/3d_fit_data.npz'
  pts3d_path: './data/{id}/tracked3D_normalized_pts_fix_contour.npy'
"""


def random_state(section: dict, prefix: str) -> dict[str, torch.Tensor]:
    """Random tensors with exactly the reference keys and shapes; BN variances positive."""
    g = torch.Generator().manual_seed(0)
    state = {}
    for key, shape in section.items():
        if key == "__params__":
            continue
        if key.endswith("num_batches_tracked"):
            state[prefix + key] = torch.tensor(100, dtype=torch.long)
        elif key.endswith("running_var"):
            state[prefix + key] = torch.rand(shape, generator=g) + 0.5
        else:
            state[prefix + key] = torch.randn(shape, generator=g) * 0.02
    return state


def make_release(root, identity: str, size: str) -> None:
    keys = reference_keys()
    data = root / "data" / identity
    write_assets(data, 512, n_frames=60, apc_frames=400)
    (data / "checkpoints").mkdir()
    torch.save(random_state(keys["APC_encoder"], ""), root / "data" / "APC_epoch_160.model")
    torch.save(random_state(keys["Audio2Feature(LSTM)"], "module."), data / "checkpoints" / "Audio2Feature.pkl")
    torch.save(random_state(keys["Audio2Headpose(WaveNet)"], "module."), data / "checkpoints" / "Audio2Headpose.pkl")
    torch.save(random_state(keys[f"Feature2Face_G[{size}]"], "module."), data / "checkpoints" / "Feature2Face.pkl")
    (root / "config").mkdir()
    (root / "config" / f"{identity}.yaml").write_text(RELEASE_YAML.replace("{id}", identity).replace("{size}", size))


@pytest.mark.parametrize("size", ["normal", pytest.param("large", marks=pytest.mark.slow)])
def test_release_layout_runs_unchanged(tmp_path, size):
    make_release(tmp_path, "May", size)
    import soundfile as sf

    audio, sr = sf.read(FIXTURES / "speech_3s.wav")
    sf.write(tmp_path / "00083.wav", audio[: int(0.4 * sr)].astype("float32"), sr, subtype="FLOAT")
    args = ["--id", "May", "--driving_audio", str(tmp_path / "00083.wav"), "--config_dir", str(tmp_path / "config"),
            "--results_dir", str(tmp_path / "results")]
    assert demo.cli(args) == 0
    info = probe(tmp_path / "results" / "May" / "00083" / "00083.mp4")
    assert info["frames"] == 24 and "512x512" in info["video"] and info["audio"] is not None


def test_release_checkpoint_with_wrong_keys_is_refused(tmp_path, capsys):
    make_release(tmp_path, "May", "normal")
    path = tmp_path / "data" / "May" / "checkpoints" / "Audio2Headpose.pkl"
    state = torch.load(path, weights_only=True)
    state["module.WaveNet.extra.weight"] = torch.zeros(3)
    torch.save(state, path)
    args = ["--id", "May", "--driving_audio", str(FIXTURES / "speech_3s.wav"),
            "--config_dir", str(tmp_path / "config"), "--results_dir", str(tmp_path / "results")]
    assert demo.cli(args) == 2
    err = capsys.readouterr().err
    assert "Audio2Headpose.pkl: unexpected keys: WaveNet.extra.weight" in err


def test_release_apc_with_postnet_and_prefix_loads(tmp_path):
    from models.networks import APC, APCConfig
    from util.checkpoint import load_network

    state = {"module." + k: v for k, v in APC().state_dict().items()}  # encoder + upstream postnet, DataParallel
    torch.save(state, tmp_path / "apc.model")
    net, _, _ = load_network(tmp_path / "apc.model", "APC", APC, APCConfig, APCConfig(), "APC checkpoint",
                             optional_prefixes=("postnet.",))
    assert torch.equal(net.rnns[0].weight_ih_l0, state["module.rnns.0.weight_ih_l0"])
