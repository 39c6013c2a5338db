"""Training loops: temporal action localization on frames (end to end or frozen) and on features."""
