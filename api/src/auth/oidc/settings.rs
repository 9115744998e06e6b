//! The OpenID Connect settings of `serve` (README, `serve --help`), checked at start: a
//! marketplace points autokey at its identity provider with `OIDC_ISSUERS`,
//! `OIDC_AUDIENCE`, `OIDC_ROLE_CLAIM` and `OIDC_CONSOLE_CLIENT_ID` (`OIDC_ADMIN_SUBJECTS`
//! for the few accounts that may act as admin).

use std::{collections::HashSet, time::Duration};

use clap::Args;

#[derive(Args, Debug, Clone, Default)]
pub struct OidcArgs {
    /// OpenID Connect issuers whose JWT access tokens are accepted beside autokey's own
    /// tokens: comma-separated issuer URLs, exactly as their tokens' `iss` (https, or http on
    /// localhost only). Keys come from `<issuer>/.well-known/openid-configuration`.
    #[arg(long, env = "OIDC_ISSUERS", value_delimiter = ',')]
    pub oidc_issuers: Vec<String>,
    /// The audience a JWT must name in `aud` to be accepted (required with OIDC_ISSUERS).
    #[arg(long, env = "OIDC_AUDIENCE")]
    pub oidc_audience: Option<String>,
    /// The JWT claim holding the autokey role (seller, buyer, storefront; admin only for
    /// OIDC_ADMIN_SUBJECTS). A dotted path reaches into objects (realm_access.roles); an
    /// array claim must hold exactly one autokey role.
    #[arg(long, env = "OIDC_ROLE_CLAIM", default_value = "autokey_role")]
    pub oidc_role_claim: String,
    /// The accounts that may act as admin: comma-separated `sub` values (with one issuer)
    /// or `<issuer>#<sub>`. Nobody else is admin whatever their role claim says.
    #[arg(long, env = "OIDC_ADMIN_SUBJECTS", value_delimiter = ',')]
    pub oidc_admin_subjects: Vec<String>,
    /// The seller console's client id at the first issuer (a public client: Authorization
    /// Code with PKCE, redirect URI `<autokey's URL>/seller/callback`). Turns on
    /// GET /seller/login; without it sellers paste a token.
    #[arg(long, env = "OIDC_CONSOLE_CLIENT_ID")]
    pub oidc_console_client_id: Option<String>,
}

/// The checked settings.
#[derive(Debug, Clone)]
pub struct OidcConfig {
    /// Issuer identifiers, exactly as in `iss`.
    pub issuers: Vec<String>,
    pub audience: String,
    /// `OIDC_ROLE_CLAIM` split on dots.
    pub role_claim: Vec<String>,
    /// (issuer, sub) pairs allowed the admin role.
    pub admins: HashSet<(String, String)>,
    pub console_client_id: Option<String>,
    /// The least time between two fetches of an issuer's keys caused by an unknown `kid`
    /// (one minute; tests shorten it to see a rotation without waiting).
    pub min_refresh_interval: Duration,
}

impl OidcConfig {
    /// The least time between two key fetches caused by unknown `kid`s.
    pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_secs(60);

    /// The settings for `issuers` and `audience` with every other one at its default.
    pub fn new(issuers: Vec<String>, audience: impl Into<String>) -> Self {
        Self {
            issuers,
            audience: audience.into(),
            role_claim: vec!["autokey_role".into()],
            admins: HashSet::new(),
            console_client_id: None,
            min_refresh_interval: Self::MIN_REFRESH_INTERVAL,
        }
    }

    /// The console's issuer (the first one).
    pub fn console_issuer(&self) -> &str {
        &self.issuers[0]
    }
}

fn non_empty(values: &[String]) -> Vec<String> {
    values
        .iter()
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// An issuer must be an absolute https URL without query or fragment (http only on a
/// loopback host: its keys must not travel in clear over a network).
fn check_issuer(issuer: &str) -> Result<(), String> {
    let bad = |why: &str| format!("configuration error: OIDC_ISSUERS: {issuer:?} {why}");
    let url = url::Url::parse(issuer).map_err(|e| bad(&format!("is not a URL ({e})")))?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(bad("must not have a query or a fragment"));
    }
    match url.scheme() {
        "https" => Ok(()),
        "http" if is_loopback(url.host_str().unwrap_or("")) => Ok(()),
        _ => Err(bad("must be an https URL (http only on localhost)")),
    }
}

/// localhost, 127.0.0.0/8 or [::1].
pub fn is_loopback(host: &str) -> bool {
    let host = host.trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

impl OidcArgs {
    /// The checked settings, None when OIDC_ISSUERS is empty; the error is the one line
    /// to print.
    pub fn config(&self) -> Result<Option<OidcConfig>, String> {
        let issuers = non_empty(&self.oidc_issuers);
        let console = self
            .oidc_console_client_id
            .as_deref()
            .map(str::trim)
            .filter(|c| !c.is_empty());
        if issuers.is_empty() {
            let dependent = [
                ("OIDC_AUDIENCE", self.oidc_audience.is_some()),
                (
                    "OIDC_ADMIN_SUBJECTS",
                    !non_empty(&self.oidc_admin_subjects).is_empty(),
                ),
                ("OIDC_CONSOLE_CLIENT_ID", console.is_some()),
            ];
            if let Some((name, _)) = dependent.iter().find(|(_, set)| *set) {
                return Err(format!(
                    "configuration error: {name} is set but OIDC_ISSUERS is empty"
                ));
            }
            return Ok(None);
        }
        for issuer in &issuers {
            check_issuer(issuer)?;
        }
        let audience = self
            .oidc_audience
            .as_deref()
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .ok_or("configuration error: OIDC_AUDIENCE is required with OIDC_ISSUERS")?;
        let role_claim: Vec<String> = self.oidc_role_claim.split('.').map(str::to_owned).collect();
        if role_claim.iter().any(String::is_empty) {
            return Err(format!(
                "configuration error: OIDC_ROLE_CLAIM {:?} is not a claim name or dotted path",
                self.oidc_role_claim
            ));
        }
        let mut admins = HashSet::new();
        for entry in non_empty(&self.oidc_admin_subjects) {
            match entry.rsplit_once('#') {
                Some((issuer, sub)) if issuers.iter().any(|i| i == issuer) && !sub.is_empty() => {
                    admins.insert((issuer.to_owned(), sub.to_owned()));
                }
                Some(_) => {
                    return Err(format!(
                        "configuration error: OIDC_ADMIN_SUBJECTS: {entry:?} names no issuer of \
                         OIDC_ISSUERS (write <issuer>#<sub>)"
                    ));
                }
                None if issuers.len() == 1 => {
                    admins.insert((issuers[0].clone(), entry));
                }
                None => {
                    return Err(format!(
                        "configuration error: OIDC_ADMIN_SUBJECTS: {entry:?} must name its issuer \
                         (<issuer>#<sub>) when OIDC_ISSUERS has several"
                    ));
                }
            }
        }
        Ok(Some(OidcConfig {
            issuers,
            audience: audience.to_owned(),
            role_claim,
            admins,
            console_client_id: console.map(str::to_owned),
            min_refresh_interval: OidcConfig::MIN_REFRESH_INTERVAL,
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(issuers: &[&str], audience: Option<&str>, admins: &[&str]) -> OidcArgs {
        OidcArgs {
            oidc_issuers: issuers.iter().map(|s| s.to_string()).collect(),
            oidc_audience: audience.map(str::to_owned),
            oidc_role_claim: "autokey_role".into(),
            oidc_admin_subjects: admins.iter().map(|s| s.to_string()).collect(),
            oidc_console_client_id: None,
        }
    }

    #[test]
    fn nothing_set_is_off_and_a_lone_dependent_setting_is_refused() {
        assert!(args(&[], None, &[]).config().unwrap().is_none());
        assert!(args(&[""], None, &[]).config().unwrap().is_none());
        let err = args(&[], Some("api"), &[]).config().unwrap_err();
        assert!(
            err.contains("OIDC_AUDIENCE is set but OIDC_ISSUERS"),
            "{err}"
        );
    }

    #[test]
    fn issuers_must_be_https_except_on_loopback_and_need_an_audience() {
        let ok = args(
            &["https://id.example", "http://127.0.0.1:9"],
            Some("api"),
            &[],
        );
        assert_eq!(ok.config().unwrap().unwrap().issuers.len(), 2);
        for bad in ["http://id.example", "id.example", "https://id.example/?a=1"] {
            let err = args(&[bad], Some("api"), &[]).config().unwrap_err();
            assert!(
                err.starts_with("configuration error: OIDC_ISSUERS"),
                "{err}"
            );
        }
        let err = args(&["https://id.example"], None, &[])
            .config()
            .unwrap_err();
        assert!(err.contains("OIDC_AUDIENCE is required"), "{err}");
    }

    #[test]
    fn admin_subjects_name_their_issuer_when_there_are_several() {
        let one = args(&["https://a.example"], Some("api"), &["alice"]);
        let admins = one.config().unwrap().unwrap().admins;
        assert!(admins.contains(&("https://a.example".into(), "alice".into())));
        let two = ["https://a.example", "https://b.example"];
        assert!(args(&two, Some("api"), &["alice"]).config().is_err());
        assert!(
            args(&two, Some("api"), &["https://c.example#alice"])
                .config()
                .is_err()
        );
        let named = args(&two, Some("api"), &["https://b.example#alice"]);
        let admins = named.config().unwrap().unwrap().admins;
        assert!(admins.contains(&("https://b.example".into(), "alice".into())));
    }
}
