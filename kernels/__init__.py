"""Hot-spot kernels, each with the plain-torch reference it is tested against."""

from auralm.kernels.attention import attention_reference, dot_product_attention, flash_attention, flash_attention_varlen
from auralm.kernels.vq import nearest_code

__all__ = ["attention_reference", "dot_product_attention", "flash_attention", "flash_attention_varlen", "nearest_code"]
