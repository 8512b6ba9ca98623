"""Plain objects, names, selectors and validation: the shared language of funcmesh. No I/O."""
