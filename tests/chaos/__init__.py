"""A fault-injection harness: worker kills, database crashes, fail points, clock skew (see docs/reliability.md)."""
