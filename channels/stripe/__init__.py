"""Stripe PaymentIntents: off-session card charges with a saved payment method."""
from channels.stripe.connector import StripeConfig, StripeConnector

__all__ = ["StripeConfig", "StripeConnector"]
