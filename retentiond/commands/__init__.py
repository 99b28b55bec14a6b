"""One module per command family; each function takes the App and returns an exit code."""
