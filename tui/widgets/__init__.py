"""One widget per panel of the kvprof TUI."""
