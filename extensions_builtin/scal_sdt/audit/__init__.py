"""Checking a data set before training: what `scal-sdt audit` and the forms' "Check data" button report."""
