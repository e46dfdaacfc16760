//! The saved types live with the image format (`ckpt_format::state`); the tracer fills
//! them.
pub use ckpt_format::state::*;
