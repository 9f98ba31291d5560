"""Channel connectors: pure translation between paycell's types and each channel's wire protocol."""
