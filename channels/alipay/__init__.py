"""Alipay Open Platform channel: signing, pure transformers and the HTTP connector."""
from channels.alipay.connector import AlipayConfig, AlipayConnector

__all__ = ["AlipayConfig", "AlipayConnector"]
