//! The on-disk format of a ckpt checkpoint, all in one place: every saved type
//! ([`state`]), the image file ([`image`]: header, metadata, page data, format
//! version) and the generation manifest ([`manifest`]: sealed list of images, its own
//! format version). docs/FORMAT.md describes the layout and the compatibility rule:
//! which versions this ckpt reads, which it refuses, and with which message.

pub mod attrs;
pub mod image;
pub mod manifest;
pub mod state;
