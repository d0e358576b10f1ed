//! Path templates: a bounded name for every request path. Configured templates
//! (`/users/{id}`) match first; other paths have their id-like segments (numbers, UUIDs,
//! long hex, base64-ish tokens) replaced by `{id}`.

use std::borrow::Cow;

/// A configured template, split into segments; `{...}` matches any one non-empty segment.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    segments: Vec<Option<String>>,
}

impl Template {
    pub(crate) fn parse(text: &str) -> Template {
        let segments = text
            .split('/')
            .skip(1)
            .map(|s| {
                if s.starts_with('{') && s.ends_with('}') {
                    None
                } else {
                    Some(s.to_string())
                }
            })
            .collect();
        Template { segments }
    }

    pub(crate) fn matches(&self, raw_path: &str) -> bool {
        let mut parts = raw_path.split('/').skip(1);
        for seg in &self.segments {
            match (seg, parts.next()) {
                (_, None) => return false,
                (None, Some("")) => return false,
                (None, Some(_)) => {}
                (Some(want), Some(p)) if want == p => {}
                (Some(_), Some(_)) => return false,
            }
        }
        parts.next().is_none()
    }
}

/// Whether a path segment looks like an identifier rather than a name.
pub(crate) fn is_id(seg: &str) -> bool {
    let b = seg.as_bytes();
    if b.is_empty() {
        return false;
    }
    if b.iter().all(u8::is_ascii_digit) {
        return true;
    }
    if is_uuid(b) {
        return true;
    }
    if b.len() >= 16 && b.iter().all(u8::is_ascii_hexdigit) {
        return true;
    }
    // base64-ish tokens: long, made of token characters, mixing letters and digits.
    b.len() >= 20
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || b"-_+=.~".contains(c))
        && b.iter().any(u8::is_ascii_digit)
        && b.iter().any(u8::is_ascii_alphabetic)
}

fn is_uuid(b: &[u8]) -> bool {
    b.len() == 36
        && b.iter().enumerate().all(|(i, c)| match i {
            8 | 13 | 18 | 23 => *c == b'-',
            _ => c.is_ascii_hexdigit(),
        })
}

/// The raw path with id-like segments replaced by `{id}`: its path template (borrowed when nothing changes).
pub(crate) fn normalise(raw_path: &str) -> Cow<'_, str> {
    if !raw_path.split('/').any(is_id) {
        return Cow::Borrowed(raw_path);
    }
    let out: Vec<&str> = raw_path
        .split('/')
        .map(|s| if is_id(s) { "{id}" } else { s })
        .collect();
    Cow::Owned(out.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalisation_table() {
        let table = [
            ("/", "/"),
            ("/api/users", "/api/users"),
            ("/api/users/42", "/api/users/{id}"),
            ("/api/users/42/orders/7", "/api/users/{id}/orders/{id}"),
            (
                "/api/orders/3f2b8c1e-9a7d-4c3b-8e2f-1a2b3c4d5e6f",
                "/api/orders/{id}",
            ),
            ("/blobs/0123456789abcdef0123", "/blobs/{id}"),
            ("/t/eyJhbGciOiJIUzI1NiJ9abc123", "/t/{id}"),
            ("/api/v2/items", "/api/v2/items"),
            ("/files/report-2024.pdf", "/files/report-2024.pdf"),
            ("/hex/deadbeef", "/hex/deadbeef"),
            ("/api/users/", "/api/users/"),
            ("/a//b", "/a//b"),
        ];
        for (input, want) in table {
            assert_eq!(normalise(input), want, "{input}");
        }
        assert!(matches!(normalise("/plain/path"), Cow::Borrowed(_)));
    }

    #[test]
    fn configured_templates_match_whole_paths() {
        let t = Template::parse("/orders/{id}/items");
        assert!(t.matches("/orders/abc/items"));
        assert!(t.matches("/orders/7/items"));
        assert!(!t.matches("/orders//items"));
        assert!(!t.matches("/orders/7/items/9"));
        assert!(!t.matches("/orders/7"));
        assert!(!t.matches("/orders/7/other"));
        let root = Template::parse("/users/{name}");
        assert!(root.matches("/users/alice"));
        assert!(!root.matches("/users"));
    }
}
