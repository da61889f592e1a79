"""litbert datamodules."""
