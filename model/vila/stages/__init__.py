"""VILA's training stages (config.py: configs and presets; projector.py, pretrain.py, sft.py: stages 0-2;
vision_pretrain.py: the mini world's stand-in for the released CLIP tower)."""
