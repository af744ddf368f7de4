"""Networks: a timm backbone adapter, decoders, heads; `PlainMTL` and the MT-CP network."""

from mtcp.models.backbone import TimmBackbone
from mtcp.models.mtcp_net import MTCPNet
from mtcp.models.plain_mtl import PlainMTL

__all__ = ["MTCPNet", "PlainMTL", "TimmBackbone"]
