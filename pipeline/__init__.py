"""The recipes (`recipe`: named end-to-end runs as Python functions) and the runner that chains the stages
(`run`: `make pipeline`, `netroller pipeline`)."""
