"""Tables and figures from finished runs: relative improvements, the paper's published numbers."""
