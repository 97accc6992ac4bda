"""Image blocks: canonical decode/re-encode and perceptual hashes."""
