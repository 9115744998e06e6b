//! Where outgoing webhooks may go: http(s) URLs whose host resolves only to public
//! addresses, unless the operator allows private ones (WEBHOOK_ALLOW_PRIVATE_URLS, for
//! tests and development). Checked when an endpoint is registered and again, after name
//! resolution, before every request (a name can be re-pointed at an internal address).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Why a URL is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UrlError {
    #[error("the URL is not valid")]
    Malformed,
    #[error("only http and https URLs are allowed")]
    Scheme,
    #[error("URLs with user names or passwords are not allowed")]
    Credentials,
    #[error("the URL names a private, loopback or otherwise non-public address")]
    Private,
    #[error("the URL is longer than 2000 characters")]
    TooLong,
}

/// The URL, checked for scheme, credentials and (when its host is an address, or
/// `localhost`) a public address.
pub fn check_url(raw: &str, allow_private: bool) -> Result<url::Url, UrlError> {
    if raw.len() > 2000 {
        return Err(UrlError::TooLong);
    }
    let url = url::Url::parse(raw).map_err(|_| UrlError::Malformed)?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(UrlError::Scheme);
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(UrlError::Credentials);
    }
    let host = url.host().ok_or(UrlError::Malformed)?;
    if !allow_private {
        let private = match host {
            url::Host::Ipv4(ip) => !is_public(IpAddr::V4(ip)),
            url::Host::Ipv6(ip) => !is_public(IpAddr::V6(ip)),
            url::Host::Domain(d) => {
                let d = d.trim_end_matches('.').to_ascii_lowercase();
                d == "localhost" || d.ends_with(".localhost")
            }
        };
        if private {
            return Err(UrlError::Private);
        }
    }
    Ok(url)
}

/// Whether an address is on the public internet (not loopback, private, link-local,
/// shared, multicast, reserved or documentation space; IPv4 inside IPv6 is unwrapped).
pub fn is_public(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => is_public_v4(v4),
        IpAddr::V6(v6) => {
            if let Some(v4) = v6.to_ipv4_mapped() {
                return is_public_v4(v4);
            }
            let s = v6.segments();
            // NAT64 (64:ff9b::/96) carries an IPv4 address.
            if s[..6] == [0x64, 0xff9b, 0, 0, 0, 0] {
                let [a, b] = s[6].to_be_bytes();
                let [c, d] = s[7].to_be_bytes();
                return is_public_v4(Ipv4Addr::new(a, b, c, d));
            }
            !(v6.is_loopback()
                || v6.is_unspecified()
                || v6.is_multicast()
                || (s[0] & 0xfe00) == 0xfc00 // unique local
                || (s[0] & 0xffc0) == 0xfe80 // link-local
                || (s[0] == 0x2001 && s[1] == 0x0db8) // documentation
                || v6 == Ipv6Addr::new(0, 0, 0, 0, 0, 0, 0, 1))
        }
    }
}

fn is_public_v4(ip: Ipv4Addr) -> bool {
    let [a, b, c, _] = ip.octets();
    !(ip.is_loopback()
        || ip.is_private()
        || ip.is_link_local()
        || ip.is_unspecified()
        || ip.is_broadcast()
        || ip.is_multicast()
        || ip.is_documentation()
        || a == 0
        || (a == 100 && (64..128).contains(&b)) // shared address space (CGNAT)
        || (a == 192 && b == 0 && c == 0) // IETF protocol assignments
        || (a == 198 && (18..20).contains(&b)) // benchmarking
        || a >= 240) // reserved
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_public_http_urls_pass_unless_private_ones_are_allowed() {
        for ok in [
            "https://hooks.example.com/autokey",
            "http://93.184.216.34:8080/x",
        ] {
            assert!(check_url(ok, false).is_ok(), "{ok}");
        }
        for (bad, why) in [
            ("ftp://example.com/", UrlError::Scheme),
            ("file:///etc/passwd", UrlError::Scheme),
            ("not a url", UrlError::Malformed),
            ("https://user:pw@example.com/", UrlError::Credentials),
            ("http://127.0.0.1:9000/", UrlError::Private),
            ("http://localhost/", UrlError::Private),
            ("http://10.1.2.3/", UrlError::Private),
            (
                "http://169.254.169.254/latest/meta-data/",
                UrlError::Private,
            ),
            ("http://[::1]/", UrlError::Private),
            ("http://[::ffff:192.168.1.1]/", UrlError::Private),
            ("http://[fd00::1]/", UrlError::Private),
            ("http://100.64.0.1/", UrlError::Private),
            ("http://0.0.0.0/", UrlError::Private),
        ] {
            assert_eq!(check_url(bad, false), Err(why), "{bad}");
        }
        assert!(check_url("http://127.0.0.1:9000/", true).is_ok());
        assert!(check_url("ftp://127.0.0.1/", true).is_err());
    }
}
