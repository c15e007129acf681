//! `sqlx::migrate!` embeds the migration files at compile time, but cargo
//! only watches source files: without this, a new migration is missing from
//! incremental builds until some source file of this crate changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
