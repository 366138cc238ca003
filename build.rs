// `sqlx::migrate!` (src/store/mod.rs) embeds migrations/ into the binary at compile time, and
// cargo does not know to look there: without this, a new migration is left out of the build
// until something else changes.
fn main() {
    println!("cargo:rerun-if-changed=migrations");
}
