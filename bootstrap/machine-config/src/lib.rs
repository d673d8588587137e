//! The versioned, validated machine configuration schema.
