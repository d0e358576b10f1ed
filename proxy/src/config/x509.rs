//! Just enough of an X.509 certificate (DER) to report it: the subject as `CN=..., O=...`
//! (values escaped as in RFC 4514, so one subject has one text and a value cannot pass for
//! another attribute), the DNS names and IP addresses it is for (subjectAltName), and its
//! validity as Unix times. Pure: bytes in, values out; anything unexpected gives `None`
//! (the certificate itself is checked by rustls/webpki), and nothing here panics.

/// What `teeproxy check` and the expiry gauge say about a certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// The subject's attributes, most significant first: `CN=client, O=Example`; the
    /// attributes of one multi-valued RDN are joined by `+`. Empty for an empty subject.
    pub subject: String,
    /// The subjectAltName's DNS names and IP addresses (`DNS:example.com`, `IP:127.0.0.1`).
    pub sans: Vec<String>,
    /// `notBefore`, in seconds since 1970-01-01T00:00:00Z.
    pub not_before: i64,
    /// `notAfter`, in seconds since 1970-01-01T00:00:00Z.
    pub not_after: i64,
}

impl CertInfo {
    /// A short name for the certificate: its first SAN's name, else its subject.
    pub fn label(&self) -> String {
        self.sans
            .first()
            .map(|s| s.split_once(':').map_or(s.as_str(), |(_, n)| n).to_string())
            .unwrap_or_else(|| self.subject.clone())
    }
}

/// Reads the subject and `notAfter` of a DER certificate.
pub fn describe(der: &[u8]) -> Option<CertInfo> {
    let (tag, cert, _) = tlv(der)?;
    if tag != SEQUENCE {
        return None;
    }
    let (tag, tbs, _) = tlv(cert)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut rest = tbs;
    let mut next = || {
        let (tag, value, after) = tlv(rest)?;
        rest = after;
        Some((tag, value))
    };
    let (mut tag, _) = next()?;
    if tag == VERSION {
        (tag, _) = next()?;
    }
    // serial, signature algorithm, issuer, validity, subject
    if tag != INTEGER {
        return None;
    }
    let _signature = next()?;
    let _issuer = next()?;
    let (tag, validity) = next()?;
    if tag != SEQUENCE {
        return None;
    }
    let (before_tag, not_before, after) = tlv(validity)?;
    let (after_tag, not_after, _) = tlv(after)?;
    let (tag, subject) = next()?;
    if tag != SEQUENCE {
        return None;
    }
    // subjectPublicKeyInfo, then optional unique ids ([1], [2]) and extensions ([3]).
    let _key = next()?;
    let mut sans = Vec::new();
    while let Some((tag, value)) = next() {
        if tag == EXTENSIONS {
            // Names are for reports: an extension this reader does not follow leaves none.
            sans = alt_names(value).unwrap_or_default();
        }
    }
    Some(CertInfo {
        subject: name(subject)?,
        sans,
        not_before: time(before_tag, not_before)?,
        not_after: time(after_tag, not_after)?,
    })
}

/// The DNS names and IP addresses of the subjectAltName extension, if any, from
/// `[3] EXPLICIT Extensions`.
fn alt_names(explicit: &[u8]) -> Option<Vec<String>> {
    let (tag, mut extensions, _) = tlv(explicit)?;
    if tag != SEQUENCE {
        return None;
    }
    let mut out = Vec::new();
    while !extensions.is_empty() {
        let (tag, extension, rest) = tlv(extensions)?;
        extensions = rest;
        if tag != SEQUENCE {
            return None;
        }
        let (tag, oid, mut fields) = tlv(extension)?;
        if tag != OID || oid != SUBJECT_ALT_NAME {
            continue;
        }
        // extnID, critical BOOLEAN DEFAULT FALSE, extnValue OCTET STRING
        let (mut tag, mut value, rest) = tlv(fields)?;
        if tag == BOOLEAN {
            fields = rest;
            (tag, value, _) = tlv(fields)?;
        }
        if tag != OCTET_STRING {
            return None;
        }
        let (tag, mut names, _) = tlv(value)?;
        if tag != SEQUENCE {
            return None;
        }
        while !names.is_empty() {
            let (tag, value, rest) = tlv(names)?;
            names = rest;
            match tag {
                DNS_NAME => out.push(format!("DNS:{}", String::from_utf8_lossy(value))),
                IP_ADDRESS => {
                    let ip = match value.len() {
                        4 => <[u8; 4]>::try_from(value).ok().map(std::net::IpAddr::from),
                        16 => <[u8; 16]>::try_from(value).ok().map(std::net::IpAddr::from),
                        _ => None,
                    };
                    out.extend(ip.map(|ip| format!("IP:{ip}")));
                }
                _ => {}
            }
        }
    }
    Some(out)
}

const BOOLEAN: u8 = 0x01;
const INTEGER: u8 = 0x02;
const OCTET_STRING: u8 = 0x04;
const OID: u8 = 0x06;
const SEQUENCE: u8 = 0x30;
const SET: u8 = 0x31;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
/// `[0] EXPLICIT Version` in a `TBSCertificate`.
const VERSION: u8 = 0xa0;
/// `[3] EXPLICIT Extensions` in a `TBSCertificate`.
const EXTENSIONS: u8 = 0xa3;
/// id-ce-subjectAltName, 2.5.29.17.
const SUBJECT_ALT_NAME: &[u8] = &[0x55, 0x1d, 0x11];
/// `GeneralName`'s `[2] dNSName` and `[7] iPAddress` (implicit, primitive).
const DNS_NAME: u8 = 0x82;
const IP_ADDRESS: u8 = 0x87;

/// One DER element: (tag, contents, what follows). Single-byte tags only (all X.509 uses).
fn tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = if first < 0x80 {
        (usize::from(first), rest)
    } else {
        let n = usize::from(first & 0x7f);
        if n == 0 || n > 4 || rest.len() < n {
            return None;
        }
        let len = rest[..n]
            .iter()
            .fold(0usize, |acc, b| (acc << 8) | usize::from(*b));
        (len, &rest[n..])
    };
    (rest.len() >= len).then(|| (tag, &rest[..len], &rest[len..]))
}

/// A `Name` (SEQUENCE OF SET OF AttributeTypeAndValue) as `CN=a, O=b`: a certificate
/// lists the most significant attribute first (`C`, `O`, `CN`); like RFC 4514 strings,
/// this puts the common name first.
fn name(mut rdns: &[u8]) -> Option<String> {
    let mut parts = Vec::new();
    while !rdns.is_empty() {
        let (tag, set, rest) = tlv(rdns)?;
        rdns = rest;
        if tag != SET {
            return None;
        }
        let mut attrs = set;
        let mut rdn = Vec::new();
        while !attrs.is_empty() {
            let (tag, attr, rest) = tlv(attrs)?;
            attrs = rest;
            if tag != SEQUENCE {
                return None;
            }
            let (tag, oid, value) = tlv(attr)?;
            if tag != OID {
                return None;
            }
            rdn.push(format!("{}={}", attribute(oid), attribute_value(value)?));
        }
        parts.push(rdn.join("+"));
    }
    parts.reverse();
    Some(parts.join(", "))
}

/// An attribute's value as RFC 4514 writes it: a string with its special characters
/// escaped, or `#` and the hex of its DER when it is not a string type or not valid text.
fn attribute_value(der: &[u8]) -> Option<String> {
    let (tag, value, _) = tlv(der)?;
    let text = match tag {
        // UTF8String, PrintableString, IA5String
        0x0c | 0x13 | 0x16 => std::str::from_utf8(value).ok().map(str::to_string),
        // BMPString: UTF-16BE
        0x1e if value.len() % 2 == 0 => {
            let units = value
                .chunks_exact(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]));
            char::decode_utf16(units)
                .collect::<Result<String, _>>()
                .ok()
        }
        _ => None,
    };
    let Some(text) = text else {
        let hex: String = der.iter().map(|b| format!("{b:02x}")).collect();
        return Some(format!("#{hex}"));
    };
    let last = text.chars().count().saturating_sub(1);
    let mut out = String::with_capacity(text.len());
    for (i, c) in text.chars().enumerate() {
        let special = matches!(c, ',' | '+' | '"' | '\\' | '<' | '>' | ';' | '=')
            || (i == 0 && matches!(c, '#' | ' '))
            || (i == last && c == ' ');
        if special {
            out.push('\\');
            out.push(c);
        } else if c.is_control() {
            out.push_str(&format!("\\{:02x}", u32::from(c)));
        } else {
            out.push(c);
        }
    }
    Some(out)
}

/// The short name of a common attribute type, else its dotted OID.
fn attribute(oid: &[u8]) -> String {
    let short = match oid {
        [0x55, 0x04, 0x03] => "CN",
        [0x55, 0x04, 0x06] => "C",
        [0x55, 0x04, 0x07] => "L",
        [0x55, 0x04, 0x08] => "ST",
        [0x55, 0x04, 0x0a] => "O",
        [0x55, 0x04, 0x0b] => "OU",
        [0x55, 0x04, 0x05] => "serialNumber",
        _ => "",
    };
    if !short.is_empty() {
        return short.to_string();
    }
    let mut out = String::new();
    let mut acc: u64 = 0;
    for (i, b) in oid.iter().enumerate() {
        acc = (acc << 7) | u64::from(b & 0x7f);
        if b & 0x80 == 0 {
            if out.is_empty() && i < 4 {
                let (a, b) = if acc < 80 {
                    (acc / 40, acc % 40)
                } else {
                    (2, acc - 80)
                };
                out = format!("{a}.{b}");
            } else {
                out.push_str(&format!(".{acc}"));
            }
            acc = 0;
        }
    }
    out
}

/// `UTCTime` (`YYMMDDHHMMSSZ`) or `GeneralizedTime` (`YYYYMMDDHHMMSSZ`) as a Unix time.
fn time(tag: u8, text: &[u8]) -> Option<i64> {
    if !text.is_ascii() {
        return None;
    }
    let text = std::str::from_utf8(text).ok()?.strip_suffix('Z')?;
    let (year, rest) = match tag {
        UTC_TIME if text.len() == 12 => {
            let yy: i64 = text[..2].parse().ok()?;
            (if yy < 50 { 2000 + yy } else { 1900 + yy }, &text[2..])
        }
        GENERALIZED_TIME if text.len() == 14 => (text[..4].parse().ok()?, &text[4..]),
        _ => return None,
    };
    let field = |i: usize| rest.get(i..i + 2)?.parse::<i64>().ok();
    let (month, day) = (field(0)?, field(2)?);
    let (h, m, s) = (field(4)?, field(6)?, field(8)?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + h * 3600 + m * 60 + s)
}

/// A Unix time as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn format_time(unix: i64) -> String {
    let (days, secs) = (unix.div_euclid(86_400), unix.rem_euclid(86_400));
    // Howard Hinnant's civil_from_days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

/// Days from 1970-01-01 to a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(time(UTC_TIME, b"700101000000Z"), Some(0));
        assert_eq!(time(UTC_TIME, b"491231235959Z"), Some(2_524_607_999));
        assert_eq!(
            time(GENERALIZED_TIME, b"20380119031408Z"),
            Some(2_147_483_648)
        );
        assert_eq!(time(UTC_TIME, b"7001010000Z"), None);
        assert_eq!(
            time(UTC_TIME, "\u{20ac}000000000Z".as_bytes()),
            None,
            "no panic"
        );
        assert_eq!(format_time(0), "1970-01-01T00:00:00Z");
        assert_eq!(format_time(2_147_483_648), "2038-01-19T03:14:08Z");
        assert_eq!(format_time(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(time(GENERALIZED_TIME, b"20381319031408Z"), None);
    }

    #[test]
    fn oids() {
        assert_eq!(attribute(&[0x55, 0x04, 0x03]), "CN");
        // 1.2.840.113549.1.9.1 (emailAddress)
        assert_eq!(
            attribute(&[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x09, 0x01]),
            "1.2.840.113549.1.9.1"
        );
    }

    #[test]
    fn subject_names_and_validity_of_a_real_certificate() {
        let mut params =
            rcgen::CertificateParams::new(vec!["a.test".to_string(), "127.0.0.1".to_string()])
                .unwrap();
        // Most significant first, as CAs write them.
        params.distinguished_name = rcgen::DistinguishedName::new();
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, "Example");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "a.test");
        params.not_before = rcgen::date_time_ymd(2020, 1, 2);
        params.not_after = rcgen::date_time_ymd(2051, 3, 4);
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let info = describe(cert.der()).unwrap();
        assert_eq!(info.subject, "CN=a.test, O=Example");
        assert_eq!(info.sans, ["DNS:a.test", "IP:127.0.0.1"]);
        assert_eq!(format_time(info.not_before), "2020-01-02T00:00:00Z");
        assert_eq!(format_time(info.not_after), "2051-03-04T00:00:00Z");
        assert_eq!(info.label(), "a.test");
    }

    #[test]
    fn subjects_are_escaped_so_one_value_cannot_pass_for_two_attributes() {
        let subject = |push: &dyn Fn(&mut rcgen::DistinguishedName)| {
            let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
            params.distinguished_name = rcgen::DistinguishedName::new();
            push(&mut params.distinguished_name);
            let key = rcgen::KeyPair::generate().unwrap();
            describe(params.self_signed(&key).unwrap().der())
                .unwrap()
                .subject
        };
        let two = subject(&|dn| {
            dn.push(rcgen::DnType::OrganizationName, "Example");
            dn.push(rcgen::DnType::CommonName, "alice");
        });
        let one = subject(&|dn| dn.push(rcgen::DnType::CommonName, "alice, O=Example"));
        assert_eq!(two, "CN=alice, O=Example");
        assert_eq!(one, "CN=alice\\, O\\=Example");
        assert_ne!(one, two);
        assert_eq!(
            subject(&|dn| dn.push(rcgen::DnType::CommonName, "#x+y ")),
            "CN=\\#x\\+y\\ "
        );
        assert_eq!(
            subject(&|dn| dn.push(rcgen::DnType::CommonName, " #a")),
            "CN=\\ #a",
            "only a leading # or space is escaped"
        );
        // An empty subject (rcgen then marks the subjectAltName critical).
        assert_eq!(subject(&|_| {}), "");
    }

    #[test]
    fn a_critical_subject_alt_name_is_read() {
        let mut params = rcgen::CertificateParams::new(vec!["a.test".to_string()]).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        let key = rcgen::KeyPair::generate().unwrap();
        let info = describe(params.self_signed(&key).unwrap().der()).unwrap();
        assert_eq!(info.sans, ["DNS:a.test"]);
        assert_eq!(info.label(), "a.test");
    }

    #[test]
    fn garbage_is_none() {
        assert_eq!(describe(b""), None);
        assert_eq!(describe(&[0x30, 0x82, 0xff]), None);
        assert_eq!(describe(&[0x30, 0x03, 0x02, 0x01, 0x01]), None);
    }
}
