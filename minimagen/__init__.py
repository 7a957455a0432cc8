"""minimagen: a compact, tested reference implementation of Imagen (Saharia et al. 2022).

The public API (everything else is importable from its module, but these are the names to start with):

    Cascade, CascadeConfig, StageConfig      the text -> image cascade (cascade.py, sampling.py)
    UNet, UNetConfig, unet_config            the U-Nets and their presets (networks/)
    NoiseSchedule                            diffusion schedules and maths (diffusion.py)
    load_text_encoder, EmbeddingCache        frozen text encoders and the caption-embedding cache
    prepare_lowres_condition                 noise conditioning augmentation (conditioning.py)
    Trainer, TrainConfig                     training one stage at a time (training.py)

Nothing here touches the network or loads a model at import time.
"""
from .cascade import Cascade, CascadeConfig, StageConfig
from .conditioning import prepare_lowres_condition
from .diffusion import NoiseSchedule
from .embedding_cache import EmbeddingCache
from .networks.unet import UNet, UNetConfig, unet_config
from .text_encoder import load_text_encoder
from .training import TrainConfig, Trainer

__version__ = "0.1.0"
__all__ = ["Cascade", "CascadeConfig", "StageConfig", "UNet", "UNetConfig", "unet_config", "NoiseSchedule",
           "load_text_encoder", "EmbeddingCache", "prepare_lowres_condition", "Trainer", "TrainConfig"]
