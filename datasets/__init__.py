"""Dataset classes, pix2pix style: datasets/<name>_dataset.py defines <Name>Dataset (see util/registry.py)."""
