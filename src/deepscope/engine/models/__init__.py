"""Pure ``torch.nn.Module`` architectures, looked up by name."""

from deepscope.engine.models.registry import build_model, get_model_class, register_model
from deepscope.engine.models.unet import UNet

__all__ = ["UNet", "build_model", "get_model_class", "register_model"]
