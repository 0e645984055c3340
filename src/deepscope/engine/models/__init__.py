"""Pure ``torch.nn.Module`` architectures, looked up by name."""

from deepscope.engine.models.registry import build_model, get_model_class, register_model
from deepscope.engine.models.unet import UNet

# Importing registers the classifiers (small, resnet18, unet_encoder).
from deepscope.engine.models import classifiers as _classifiers  # noqa: E402,F401  isort: skip

__all__ = ["UNet", "build_model", "get_model_class", "register_model"]
