//! What both reconcilers share: the context, requeue timing, Events, and writing owned objects
//! only when they differ.

pub mod apply;
pub mod context;
pub mod timing;

pub use context::Context;
