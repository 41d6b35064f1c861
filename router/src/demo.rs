//! `tether demo` (placeholder replaced below).
pub fn run(_duration: Option<u64>, _base_port: u16) -> Result<(), String> {
    Err("demo not built yet".into())
}
