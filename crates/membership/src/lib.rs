//! holdfast-membership
