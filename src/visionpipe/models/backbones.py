"""Backbones visionpipe adds to timm's registry (``timm.create_model`` then builds them by name, ``features_only``
included, like any timm model).

``resnet10t_nano``: timm's resnet10t (deep tiered stem, average-pool shortcuts, one BasicBlock a stage) at
half width: channels 32/64/128/256, stem 16. 1.2 M parameters, 0.18 GFLOPs at 128 px (resnet10t: 4.9 M,
0.72): the size class of the YOLO "nano" models, the default backbone of the detection task's rtdet.
No published weights (train from scratch, or give ``pretrained_path``).
"""

from __future__ import annotations

import timm
from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import generate_default_cfgs, register_model
from timm.models.resnet import BasicBlock, _create_resnet

default_cfgs = generate_default_cfgs({  # what timm's registry reads beside a model (no weights: url empty)
    "resnet10t_nano": {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (7, 7), "crop_pct": 0.875,
                       "interpolation": "bilinear", "mean": IMAGENET_DEFAULT_MEAN, "std": IMAGENET_DEFAULT_STD,
                       "first_conv": "conv1.0", "classifier": "fc"},
})

if not timm.is_model("resnet10t_nano"):  # once per process; timm's own model of that name would win if it ever had one
    @register_model
    def resnet10t_nano(pretrained: bool = False, **kwargs):
        """resnet10t at half width (see the module docstring)."""
        args = dict(block=BasicBlock, layers=(1, 1, 1, 1), stem_width=16, stem_type="deep_tiered", avg_down=True, channels=(32, 64, 128, 256))
        return _create_resnet("resnet10t_nano", pretrained, **dict(args, **kwargs))
