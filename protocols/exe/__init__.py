"""Executive (EXE, "Protocol A"): the payment system's master side (sans-I/O)."""
