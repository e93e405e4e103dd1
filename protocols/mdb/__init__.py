"""MDB/ICP: 9-bit words, the link layer and the cashless device (sans-I/O)."""
