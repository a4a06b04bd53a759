"""Unit constants. Decimal (GB = 1e9 bytes) and binary (GiB = 2**30 bytes) are both used; names say which."""

KB = 1_000
MB = 1_000_000
GB = 1_000_000_000
KiB = 1 << 10
MiB = 1 << 20
GiB = 1 << 30
BITS_PER_BYTE = 8
UM2_PER_MM2 = 1e6
PJ_PER_J = 1e12
