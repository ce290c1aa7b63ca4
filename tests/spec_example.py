"""The event log example of SPEC section 1, shared by the ingest and replay tests."""

SPEC_LOG = """\
# pvtrace-log v1
# ncpu=4
# ndomains=1
1000 0 101 E - 0 - 0 0x200000 pmap_enter
1000 0 101 A pv 0xfffff80001000040 w 0 0x200000 pmap_enter
11000 0 101 R pv 0xfffff80001000040 w 0 0x200000 pmap_enter
11000 1 102 B pv 0xfffff80001000040 w 9000 0x201000 pmap_enter
11000 1 102 A pv 0xfffff80001000040 w 0 0x201000 pmap_enter
16000 1 102 R pv 0xfffff80001000040 w 0 0x201000 pmap_enter
"""
