//! Authentication plugin math.

pub mod native_password;
