//! Rialto's dataplane: what happens to a frame between RX and TX, as a pure
//! function of the frame, the tables and the time.
//!
//! - [`wire`]: in-place header views, the only place header layouts are
//!   written;
//! - [`frame`]: a frame inside its buffer, with headroom to grow into;
//! - [`pipeline`]: the per-frame work, one file per stage, and the
//!   counters it keeps;
//! - [`Verdict`] and [`DropReason`]: what becomes of a frame.
//!
//! Nothing here does I/O, parses a config or logs: the AF_XDP shell
//! (`rialto`) hands the pipeline a batch of frames and gets verdicts back;
//! replay, the fuzz target, the fixture table and the benchmarks hand it
//! frames from captures and vectors, and all of them run this same code.
//! The crate's dependencies are the compiled tables it indexes
//! (`rialto-tables`) and a few pure crates; `test.sh` checks that it stays so.

pub mod frame;
pub mod pipeline;
mod verdict;
pub mod wire;

pub use frame::{FrameBuf, HEADROOM, OwnedFrame};
pub use pipeline::Pipeline;
pub use verdict::{DropReason, Verdict};
