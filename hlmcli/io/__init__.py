"""Reading and writing: data files, the archive of k levels and its cache, residual files, HLM's own output."""
