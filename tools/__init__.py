"""Developer tools run from a checkout (`make chaos`, `python tools/longest_functions.py`): not a package of
the wheel (pyproject lists the packages), and no product module imports them."""
