"""Primitives shared by every layer of paycell: money, ids, order states, errors, settings, clock."""
