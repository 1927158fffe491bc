"""Results to text, JSON, tables, plots and comparisons: formatting only, no statistics."""
