//! What the two stores share for bulk loads ([`crate::Store::begin_bulk_load`]):
//! when one may start, how a start treats one left pending, and whether
//! this process is running one.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::error::{Result, StoreError};

/// A bulk load drops secondary indexes only on a table this small: on a
/// fuller one rebuilding them would cost more than it saves.
pub(crate) const MAX_ROWS: i64 = 10_000;

/// How long a start (`migrate`) waits for the locks it needs to finish a
/// bulk load's pending work. Longer than any batch or bookkeeping write; a
/// bulk load still running in another process holds them for whole files,
/// and finishes its work itself when it ends.
pub(crate) const START_LOCK_WAIT: Duration = Duration::from_secs(2);

/// What a start (`migrate`) makes of finishing a bulk load's pending work:
/// when `held` says the locks were held by another process, a load is still
/// running there and finishes the work itself when it ends, so the start
/// goes on; any other error stops the start.
pub(crate) fn leave_to_running_load(
    finished: Result<()>,
    held: impl FnOnce(&StoreError) -> bool,
) -> Result<()> {
    match finished {
        Err(e) if held(&e) => {
            tracing::warn!(
                "indexes of a bulk load are pending while another process writes (an import); \
                 left to it"
            );
            Ok(())
        }
        other => other,
    }
}

/// A recorded `CREATE INDEX` made safe to run again (a second finisher, or
/// an index a killed run had already built).
pub(crate) fn idempotent(sql: &str) -> String {
    sql.replacen("CREATE INDEX ", "CREATE INDEX IF NOT EXISTS ", 1)
}

/// Whether this process is between `begin_bulk_load` and `end_bulk_load`
/// (shared by the clones of a store): its own `migrate` then leaves the
/// pending work alone.
#[derive(Debug, Clone, Default)]
pub(crate) struct Running(Arc<AtomicBool>);

impl Running {
    pub fn start(&self) {
        self.0.store(true, Ordering::Release);
    }

    /// Ends the load; whether one was running.
    pub fn stop(&self) -> bool {
        self.0.swap(false, Ordering::AcqRel)
    }

    pub fn is_on(&self) -> bool {
        self.0.load(Ordering::Acquire)
    }
}
