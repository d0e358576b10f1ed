//! Fuzz harnesses shared by `proxy/fuzz` targets and the corpus replay tests.
