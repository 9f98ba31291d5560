"""UnionPay online payments (全渠道, gateway 5.1.0): signing, pure transformers, HTTP connector."""
from channels.unionpay.connector import UnionPayConfig, UnionPayConnector

__all__ = ["UnionPayConfig", "UnionPayConnector"]
