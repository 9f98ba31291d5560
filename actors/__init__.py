"""Ray actors that own shard-partitioned order state and the channel connectors.

Each actor is a plain class (unit-testable without Ray); `actors.factory` applies `ray.remote`.
"""
