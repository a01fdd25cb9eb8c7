"""Training and evaluation engine shared by every branch."""
