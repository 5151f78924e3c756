"""The revisions, in order: 0001 the baseline, then one file per change."""
