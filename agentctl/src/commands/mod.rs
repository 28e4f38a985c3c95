//! One module per resource or verb.

pub mod cluster;
pub mod function;
pub mod image;
pub mod instance;
pub mod invoke;
pub mod logs;
pub mod node;
