"""WeChat Pay API v3: code pay (付款码), APP and Native prepay, refunds, trade bills."""
from channels.wechatpay.connector import WechatPayConfig, WechatPayConnector

__all__ = ["WechatPayConfig", "WechatPayConnector"]
