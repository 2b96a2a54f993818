//! Compiled only by scripts/boundary-probe.sh (`--cfg boundary_probe`):
//! each line uses something the core must not, and clippy must refuse each.
#![allow(dead_code, unused_must_use, clippy::let_underscore_future)]

async fn probe() {
    let _ = std::time::Instant::now();
    let _ = tokio::time::Instant::now();
    let _ = tokio::time::sleep(std::time::Duration::ZERO);
    let _ = std::fs::read("x");
    let _ = std::fs::rename("x", "y");
    let _ = std::process::Command::new("true");
    let _ = tokio::spawn(async {});
}
