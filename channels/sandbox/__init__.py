"""Local channel simulators that speak the real channel protocols (python -m channels.sandbox)."""
