"""herd's BMv2 Thrift client, the parts that need no switch: reading a program JSON's
runtime objects and encoding keys and parameters."""

from __future__ import annotations

import pytest

from herd.errors import HerdInputError
from herd.services.drivers.bmv2_thrift import ProgramInfo, encode

PROGRAM = {
    "header_types": [
        {"name": "scalars_0", "fields": [["key_0", 24, False], ["key_1", 24, False]]},
        {"name": "standard_metadata", "fields": [["ingress_port", 9, False]]},
        {"name": "options_t", "fields": [["data", "*"]]},
    ],
    "headers": [
        {"name": "scalars", "header_type": "scalars_0"},
        {"name": "standard_metadata", "header_type": "standard_metadata"},
        {"name": "options", "header_type": "options_t"},
    ],
    "pipelines": [{"name": "ingress", "tables": [
        {"name": "HerdIngress.group_table",
         "key": [{"match_type": "exact", "target": ["scalars", "key_0"]},
                 {"match_type": "exact", "target": ["scalars", "key_1"]}]},
        {"name": "HerdIngress.forwarding",
         "key": [{"match_type": "exact", "target": ["standard_metadata", "ingress_port"]}]},
    ]}],
    "actions": [
        {"name": "HerdIngress.set_group_params",
         "runtime_data": [{"name": "tau", "bitwidth": 32}, {"name": "r", "bitwidth": 32}]},
        {"name": "HerdIngress.forward", "runtime_data": [{"name": "port", "bitwidth": 9}]},
    ],
    "register_arrays": [{"name": "HerdIngress.herd_epoch_log", "bitwidth": 64, "size": 256}],
}


def test_program_info_by_short_and_full_name() -> None:
    info = ProgramInfo.from_json(PROGRAM)
    assert info.tables["group_table"] is info.tables["HerdIngress.group_table"]
    assert info.tables["group_table"].key == (("exact", 24), ("exact", 24))
    assert info.tables["forwarding"].key == (("exact", 9),)
    assert info.actions["set_group_params"] == ("HerdIngress.set_group_params", (32, 32))
    assert info.registers["herd_epoch_log"] == ("HerdIngress.herd_epoch_log", 64, 256)


def test_encode_widths_and_range() -> None:
    assert encode(2, 9, "port") == b"\x00\x02"
    assert encode(0xABCDEF, 24, "key") == b"\xab\xcd\xef"
    assert encode((1 << 64) - 1, 64, "v") == b"\xff" * 8
    with pytest.raises(HerdInputError, match=r"port = 512 does not fit in 9 bits"):
        encode(512, 9, "port")
    with pytest.raises(HerdInputError, match="does not fit"):
        encode(-1, 32, "tau")
