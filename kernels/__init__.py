"""Hot-spot kernels, each with the plain-torch reference it is tested against."""

from auralm.kernels.vq import nearest_code

__all__ = ["nearest_code"]
