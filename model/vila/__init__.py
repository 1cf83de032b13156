"""VILA (CVPR 2024): CLIP ViT + projector + LLaMA with interleaved images (see modeling_vila.py)."""
