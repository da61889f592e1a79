"""Plain model code (no Lightning): resolving, building, extracting and converting Hugging Face models."""
