"""Models: the pix2pix BaseModel contract, one <stage>_model.py per stage, networks/, losses, pipeline."""

from __future__ import annotations

import argparse


def create_model(opt: argparse.Namespace):  # noqa: ANN201 - returns the registered BaseModel subclass
    """Instantiate the model class registered as `opt.model` (models/<model>_model.py)."""
    from util import registry

    return registry.find("model", opt.model)(opt)
