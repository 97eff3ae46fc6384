//! Response cache (being written).
