//! `rialto maglev`'s output.

use std::fmt;

use super::{Table, WeightedBackend};

/// The table for `rialto maglev`: one line per slot, `{slot}\t{endpoint}`.
///
/// # Panics
///
/// If `backends` is not the slice `table` was built from (a different
/// length).
pub fn render(table: &Table, backends: &[WeightedBackend]) -> String {
    use fmt::Write as _;

    assert_eq!(
        table.backends(),
        backends.len(),
        "render needs the backends the table was built from"
    );
    let mut out = String::with_capacity(table.slots().len() * 24);
    for (slot, &index) in table.slots().iter().enumerate() {
        // Writing to a String cannot fail.
        let _ = writeln!(out, "{slot}\t{}", backends[index as usize].endpoint);
    }
    out
}
