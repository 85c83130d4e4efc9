"""Board targets, bitstreams and the host link."""
