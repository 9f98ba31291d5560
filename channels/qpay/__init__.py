"""QQ Wallet (QPay) merchant API channel: signing, pure transformers and the HTTP connector."""
from channels.qpay.connector import QPayConfig, QPayConnector

__all__ = ["QPayConfig", "QPayConnector"]
