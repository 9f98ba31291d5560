import logging

import orjson

from core.logs import JsonFormatter


def test_json_log_line_has_context_fields_and_nothing_else():
    rec = logging.LogRecord("paycell.shard", logging.WARNING, __file__, 1, "order %s late",
                            ("P_x",), None)
    rec.order_id, rec.shard, rec.auth_code = "P_x", 3, "28763443825664394"
    line = orjson.loads(JsonFormatter().format(rec))
    assert line["msg"] == "order P_x late" and line["level"] == "WARNING"
    assert (line["order_id"], line["shard"]) == ("P_x", 3)
    assert "auth_code" not in line and line["ts"].endswith("Z")
