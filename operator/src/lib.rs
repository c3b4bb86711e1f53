//! Backhaul operator (filled in by the operator issue).
