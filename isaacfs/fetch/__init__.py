"""The fetcher: single-flight, bounded, checked downloads into the mirror."""
