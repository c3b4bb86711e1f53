//! Generated protobuf types (filled in by the inference issue).
