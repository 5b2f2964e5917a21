"""The LSP networks, one module each: APC encoder, Audio2Feature, Audio2Headpose (WaveNet),
Feature2Face generators and the multiscale PatchGAN discriminator. They take typed configs, never `opt`."""

from models.networks.apc import APC, APCConfig
from models.networks.audio2feature import Audio2FeatureConfig, Audio2FeatureEnsemble, Audio2FeatureNet
from models.networks.audio2headpose import Audio2HeadposeConfig, Audio2HeadposeNet
from models.networks.discriminator import MultiscaleDiscriminator, MultiscaleDiscriminatorConfig
from models.networks.feature2face import FEATURE2FACE_GENERATORS, Feature2FaceG, Feature2FaceGConfig

# The network of each trained stage by the name its checkpoint files carry (datasets.identity.STAGES):
# its class and its config class.
NETWORKS = {"APC": (APC, APCConfig), "Audio2Feature": (Audio2FeatureNet, Audio2FeatureConfig),
            "Audio2Headpose": (Audio2HeadposeNet, Audio2HeadposeConfig),
            "Feature2Face": (Feature2FaceG, Feature2FaceGConfig)}

__all__ = [
    "APC",
    "FEATURE2FACE_GENERATORS",
    "NETWORKS",
    "APCConfig",
    "Audio2FeatureConfig",
    "Audio2FeatureEnsemble",
    "Audio2FeatureNet",
    "Audio2HeadposeConfig",
    "Audio2HeadposeNet",
    "Feature2FaceG",
    "Feature2FaceGConfig",
    "MultiscaleDiscriminator",
    "MultiscaleDiscriminatorConfig",
]
