"""Hashtag blocks: normalization, WordNet canonicalization, resampling weights."""
