//! The op set every device implements, and the CPU implementation.

pub mod sampling;
