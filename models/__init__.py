"""Models: the pix2pix BaseModel contract, one <stage>_model.py per stage, networks/, losses, pipeline."""
