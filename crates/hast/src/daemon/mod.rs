//! hastd (to be written).
