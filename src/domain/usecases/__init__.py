"""One module per use-case. Each is a small class built with the ports it needs and called with values."""
