"""litbert callbacks."""
