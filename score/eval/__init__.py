"""Two-attempt evaluation: self-correction metrics with intervals, and result tables."""
