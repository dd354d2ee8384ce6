//! Headless Chromium (Debian's `chromium`), for tests of what an operator sees in a
//! browser: [`chromium`] finds it (or skips loudly), [`headless`] renders a page.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use slipway_testkit::skip;

/// The Chromium binary, or None after a loud [`skip`] where none is installed.
pub fn chromium() -> Option<PathBuf> {
    let found = ["chromium", "chromium-browser", "google-chrome"].iter().find_map(|name| {
        let out = Command::new("sh").args(["-c", &format!("command -v {name}")]).output().ok()?;
        let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (out.status.success() && !path.is_empty()).then(|| PathBuf::from(path))
    });
    if found.is_none() {
        skip("Chromium is not installed (apt-get install chromium; packaging/test.sh does)");
    }
    found
}

/// Runs headless Chromium on `url` with `args` (such as `--dump-dom`), its profile in
/// `profile`; returns its stdout. Panics if it fails or takes over 30 s.
pub fn headless(chromium: &Path, profile: &Path, args: &[&str], url: &str) -> String {
    let mut child = Command::new(chromium)
        .args(["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .arg(url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("start chromium");
    let deadline = Instant::now() + Duration::from_secs(30);
    while child.try_wait().expect("wait for chromium").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("chromium {args:?} {url} did not finish within 30 s");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().expect("chromium output");
    assert!(out.status.success(), "chromium {args:?} {url} failed: {:?}", out.status);
    String::from_utf8_lossy(&out.stdout).into_owned()
}
