"""Networks: a timm backbone adapter, decoders, heads; `PlainMTL` and the MT-CP network."""

from mtcp.models.backbone import TimmBackbone
from mtcp.models.mask2former import Mask2FormerEncoder
from mtcp.models.mtcp_net import MTCPFeatures, MTCPNet
from mtcp.models.outputs import FeatureInfo, Predictions
from mtcp.models.plain_mtl import PlainMTL

__all__ = ["FeatureInfo", "Mask2FormerEncoder", "MTCPFeatures", "MTCPNet", "PlainMTL", "Predictions", "TimmBackbone"]
