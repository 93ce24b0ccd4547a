"""Building blocks shared by the networks: resampling ops and StyleGAN2 layers, in plain PyTorch."""

from .stylegan2 import (
    FullyConnectedLayer,
    SRConfig,
    SuperresolutionHybrid8XDC,
    SynthesisBlock,
    SynthesisLayer,
    ToRGBLayer,
    constant_ws,
    modulated_conv2d,
)
from .upfirdn import (
    bias_act,
    conv2d_resample,
    downsample2d,
    filter2d,
    setup_filter,
    upfirdn2d,
    upsample2d,
)

__all__ = [
    "FullyConnectedLayer",
    "SRConfig",
    "SuperresolutionHybrid8XDC",
    "SynthesisBlock",
    "SynthesisLayer",
    "ToRGBLayer",
    "bias_act",
    "constant_ws",
    "conv2d_resample",
    "downsample2d",
    "filter2d",
    "modulated_conv2d",
    "setup_filter",
    "upfirdn2d",
    "upsample2d",
]
