"""The sandbox's command line sets every fault knob (python -m channels.sandbox)."""
from __future__ import annotations

import dataclasses

from channels.sandbox.__main__ import config_from_args, parse_args
from channels.sandbox.knobs import Knobs


def test_no_flags_give_the_default_knobs() -> None:
    assert config_from_args(parse_args([])).knobs == Knobs()


def test_every_rate_knob_has_its_flag() -> None:
    rates = [f.name for f in dataclasses.fields(Knobs) if f.name.endswith("_rate")]
    assert "followup_error_rate" in rates
    argv = [x for name in rates for x in ("--" + name.replace("_", "-"), "0.25")]
    knobs = config_from_args(parse_args(argv)).knobs
    assert {name: getattr(knobs, name) for name in rates} == dict.fromkeys(rates, 0.25)
