"""Ray Tune trainables and the sweep driver."""
