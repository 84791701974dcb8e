"""Unmodified-style user programs run on a real mount and on the same tree unpacked (issue 8)."""
