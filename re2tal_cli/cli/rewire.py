"""`re2tal rewire`: placeholder replaced below in this session."""
