//! Replays the fuzz corpora and every kept crash (`proxy/fuzz/corpus/<target>/` and
//! `proxy/fuzz/regressions/<target>/`) through the harnesses the fuzz targets use, so
//! each of them is an ordinary test.

use std::path::{Path, PathBuf};

fn files(dir: &Path) -> Vec<PathBuf> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file() && p.file_name().is_some_and(|n| n != ".gitkeep"))
        .collect();
    files.sort();
    files
}

fn replay(target: &str, harness: fn(&[u8])) {
    let fuzz = Path::new(env!("CARGO_MANIFEST_DIR")).join("../proxy/fuzz");
    let corpus = files(&fuzz.join("corpus").join(target));
    assert!(
        corpus.len() >= 3,
        "the {target} corpus has {} files; expected the seeds at least",
        corpus.len()
    );
    let regressions = files(&fuzz.join("regressions").join(target));
    for file in corpus.iter().chain(&regressions) {
        let data = std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
        if let Err(panic) = std::panic::catch_unwind(|| harness(&data)) {
            eprintln!("{target}: {} failed", file.display());
            std::panic::resume_unwind(panic);
        }
    }
}

#[test]
fn head_sanitiser_corpus() {
    replay("head_sanitiser", teeproxy_tests::fuzz::head_sanitiser);
}

#[test]
fn config_parser_corpus() {
    replay("config_parser", teeproxy_tests::fuzz::config_parser);
}

#[test]
fn whole_proxy_corpus() {
    replay("whole_proxy", teeproxy_tests::fuzz::whole_proxy);
}
