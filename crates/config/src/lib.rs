//! holdfast-config
