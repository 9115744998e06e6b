//! What every scenario needs: a fresh database, seeded data, the real release binaries as
//! child processes, RSS readings, percentiles, tables and the results file.
//! One module each: setup (database, secrets, settings), seed (SQL-seeded state), procs
//! (child processes), report (statistics and the results file), burn (backlog burn-down).

mod burn;
mod procs;
mod report;
mod seed;
mod setup;

pub use burn::*;
pub use procs::*;
pub use report::*;
pub use seed::*;
pub use setup::*;
