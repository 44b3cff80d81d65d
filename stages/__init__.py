"""Stage functions (prepare, harvest, train, eval), each a plain function with a typed config."""
