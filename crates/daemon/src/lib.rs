//! holdfast-daemon
