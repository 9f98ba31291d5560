"""PayPal REST channel (OAuth2, Orders v2, Payments v2, Transaction Search, webhooks): signing,
pure transformers and the HTTP connector."""
from channels.paypal.connector import PayPalConfig, PayPalConnector

__all__ = ["PayPalConfig", "PayPalConnector"]
