"""CrossGuard policy pack of the estate (see policies.py)."""
