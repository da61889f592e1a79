"""Plain evaluation code: GLUE metrics, SQuAD scoring and post-processing, prediction writers."""
