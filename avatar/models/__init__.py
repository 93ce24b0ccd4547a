"""Networks: the Portrait4D reconstructor and its parts (more model families follow)."""
