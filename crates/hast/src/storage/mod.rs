//! The local component of a resource (to be written).
