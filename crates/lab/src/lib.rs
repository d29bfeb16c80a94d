//! holdfast-lab
