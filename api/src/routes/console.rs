//! `GET /seller`: the seller web console, one self-contained page that talks to the
//! API with the seller's token (kept in the browser's session storage only).
//!
//! The page is embedded in the binary and loads nothing from anywhere: its one inline
//! `<script>` and one inline `<style>` are allowed by their SHA-256 hashes in the
//! Content-Security-Policy (computed once, at start-up), so no other script or style, inline
//! or not, can run on it.

use std::sync::LazyLock;

use axum::{extract::State, http::header, response::IntoResponse};
use base64::{Engine, engine::general_purpose::STANDARD};
use sha2::{Digest, Sha256};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    // A page whose script or style cannot be found fails at start-up, not on first view.
    LazyLock::force(&CSP);
    LazyLock::force(&PAGE_WITH_SIGN_IN);
    OpenApiRouter::new().routes(routes!(console))
}

const PAGE: &str = include_str!("console.html");

static CSP: LazyLock<String> = LazyLock::new(|| content_security_policy(PAGE));

/// The page with its "Sign in with your marketplace account" link shown (when
/// OIDC_CONSOLE_CLIENT_ID is set); only the body differs, so the policy's hashes hold.
static PAGE_WITH_SIGN_IN: LazyLock<String> = LazyLock::new(|| {
    const HIDDEN: &str = r#"<p id="idp" hidden>"#;
    assert!(PAGE.contains(HIDDEN), "console.html has no {HIDDEN}");
    PAGE.replacen(HIDDEN, r#"<p id="idp">"#, 1)
});

/// The policy for `page`: its inline script and style by hash, requests to this origin only.
fn content_security_policy(page: &str) -> String {
    format!(
        "default-src 'none'; script-src {}; style-src {}; connect-src 'self'; img-src data:; \
         base-uri 'none'; form-action 'none'; frame-ancestors 'none'; \
         require-trusted-types-for 'script'; trusted-types 'none'",
        hash_source(inline_block(page, "script")),
        hash_source(inline_block(page, "style")),
    )
}

/// The text of the one `<tag>…</tag>` block of `page` (attribute-less opening tag).
fn inline_block<'a>(page: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = page
        .find(&open)
        .unwrap_or_else(|| panic!("console.html has no {open}"))
        + open.len();
    let len = page[start..]
        .find(&close)
        .unwrap_or_else(|| panic!("console.html has no {close}"));
    assert!(
        !page[start + len..].contains(&format!("<{tag}")),
        "console.html must have one <{tag}> block (the CSP allows one hash)"
    );
    &page[start..start + len]
}

/// A CSP hash source for an inline block, as the browser computes it: over the UTF-8 text
/// after the HTML parser's newline normalization (CRLF and CR become LF).
fn hash_source(text: &str) -> String {
    let normalized = text.replace("\r\n", "\n").replace('\r', "\n");
    let digest = Sha256::digest(normalized.as_bytes());
    format!("'sha256-{}'", STANDARD.encode(digest))
}

/// The seller web console (HTML): pools and their counts, key upload, keys, offers; sign-in
/// with a pasted token or, when set up, the marketplace's identity provider.
#[utoipa::path(get, path = "/seller", tag = "console", operation_id = "getSellerConsole", responses(
    (status = 200, description = "The console page.", content_type = "text/html", body = String),
))]
async fn console(State(state): State<AppState>) -> impl IntoResponse {
    let sign_in = state
        .oidc
        .as_ref()
        .is_some_and(|o| o.config().console_client_id.is_some());
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, CSP.as_str()),
            (header::CACHE_CONTROL, "no-store"),
            (header::REFERRER_POLICY, "no-referrer"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        if sign_in {
            PAGE_WITH_SIGN_IN.as_str()
        } else {
            PAGE
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_allows_the_page_script_and_style_by_hash_only() {
        let csp = content_security_policy(PAGE);
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert_eq!(csp.matches("'sha256-").count(), 2, "{csp}");
        assert!(csp.contains("default-src 'none'") && csp.contains("connect-src 'self'"));
    }

    #[test]
    fn hashes_follow_the_browser_newline_normalization() {
        let page = "<style>a{}\r\nb{}</style><script>x()\r\n</script>";
        let unix = "<style>a{}\nb{}</style><script>x()\n</script>";
        assert_eq!(content_security_policy(page), content_security_policy(unix));
        // Known value: base64(sha256("x()\n")), as a browser reports it in a CSP violation.
        assert_eq!(
            hash_source("x()\r\n"),
            "'sha256-+6CbcDIIMQT9K99dhejxWoV7rDhepLnE8u6mCl+2f50='"
        );
    }

    #[test]
    #[should_panic(expected = "one <script> block")]
    fn a_second_script_block_is_refused() {
        content_security_policy("<style></style><script>a</script><script>b</script>");
    }
}
