"""litbert lightning_modules."""
