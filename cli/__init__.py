"""The `netroller` command line (typer)."""
