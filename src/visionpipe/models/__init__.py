"""Model architectures written here (below tasks/: no task knowledge, plain ``torch.nn`` modules).

``rtdet``: a real-time anchor-free one-stage detector on any timm CNN (PAFPN neck, decoupled head,
task-aligned label assignment), with torchvision's detection interface so that it shares the
detection task's transform, postprocess, ONNX export and pyfunc contract with FCOS/RetinaNet.

``backbones``: timm models visionpipe registers into timm's registry (``resnet10t_nano``), registered on import
of this package so that every task can name them.
"""

from visionpipe.models import backbones  # noqa: F401  (registers visionpipe's backbones with timm)
