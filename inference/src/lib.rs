//! Backhaul inference server (filled in by the inference issue).
