//! Build script: records the commit the binary is built from as `TEEPROXY_COMMIT` (for
//! `teeproxy --version` and the `teeproxy_build_info` metric).
//!
//! The commit is `git rev-parse --short=12 HEAD` when git and the repository are there;
//! otherwise (a source tarball, a Docker build without `.git`, no git installed) the
//! environment variable `TEEPROXY_COMMIT`; otherwise `unknown`. It never fails the build.
//! Cargo reruns it when HEAD moves (a checkout, or a commit on the checked-out branch) or
//! `TEEPROXY_COMMIT` changes, and not on every build.

use std::path::{Path, PathBuf};
use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .current_dir(std::env::var_os("CARGO_MANIFEST_DIR")?)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    let text = text.trim();
    (out.status.success() && !text.is_empty()).then(|| text.to_string())
}

/// Watches `path` when it exists (Cargo reruns a script on every build for a path that
/// does not).
fn watch(path: &Path) {
    if path.exists() {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=TEEPROXY_COMMIT");
    let commit = git(&["rev-parse", "--short=12", "HEAD"]);
    if commit.is_some() {
        // HEAD lives in the worktree's git directory; the branch it names (or
        // packed-refs) in the common one (the same directory outside linked worktrees).
        if let Some(dir) = git(&["rev-parse", "--absolute-git-dir"]).map(PathBuf::from) {
            watch(&dir.join("HEAD"));
        }
        // (`--git-common-dir` may print a path relative to the manifest directory.)
        let manifest = PathBuf::from(std::env::var_os("CARGO_MANIFEST_DIR").unwrap_or_default());
        let common = git(&["rev-parse", "--git-common-dir"]).map(|d| manifest.join(d));
        if let (Some(common), Some(head_ref)) = (common, git(&["symbolic-ref", "-q", "HEAD"])) {
            let loose = common.join(head_ref);
            if loose.exists() {
                watch(&loose);
            } else if let Some(dir) = loose.parent() {
                // The branch is only in packed-refs (a fresh clone): its next commit
                // creates the loose file in this directory.
                watch(dir);
            }
            watch(&common.join("packed-refs"));
        }
    }
    let commit = commit
        .or_else(|| {
            std::env::var("TEEPROXY_COMMIT")
                .ok()
                .filter(|c| !c.trim().is_empty())
        })
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=TEEPROXY_COMMIT={}", commit.trim());
}
