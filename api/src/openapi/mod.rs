//! The OpenAPI document (generated from the handlers' annotations, then completed by
//! [`policy`]) and the offline Swagger UI at `/docs`. `autokey-api openapi` prints the same
//! document; `docs/openapi.json` is its committed copy (a test keeps the two equal).

mod policy;
pub mod text;

use axum::Router;
use utoipa::{
    Modify, OpenApi,
    openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme},
};
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(title = "autokey", description = "Sells and delivers license keys automatically. Contract: API.md v1."),
    modifiers(&BearerAuth),
    components(schemas(crate::error::ErrorBody, crate::error::ErrorDetail)),
)]
struct BaseDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("ak_... or JWT")
                    .description(Some(
                        "An autokey token (`ak_...`, made by `autokey-api token create`) or, \
                         with OIDC_ISSUERS set, a JWT access token of the marketplace's OpenID \
                         Connect provider: signed RS256, ES256 or EdDSA with a key the issuer \
                         publishes, `aud` containing OIDC_AUDIENCE, `exp`/`nbf` current (60 s \
                         leeway), the role in the claim OIDC_ROLE_CLAIM (default \
                         `autokey_role`). A refused token gets 401 with `WWW-Authenticate: \
                         Bearer error=\"invalid_token\", error_description=\"<why>\"`. The \
                         seller console's pages send the `autokey_session` cookie with the \
                         `X-Autokey-Csrf: 1` header instead.",
                    ))
                    .build(),
            ),
        );
    }
}

pub fn base() -> utoipa::openapi::OpenApi {
    BaseDoc::openapi()
}

/// The document as served: the routes' annotations completed by [`policy`].
pub fn finish(api: utoipa::openapi::OpenApi) -> serde_json::Value {
    let mut doc = serde_json::to_value(&api).expect("the OpenAPI document serializes");
    policy::apply(&mut doc);
    doc
}

/// The whole document, as `/api/openapi.json` serves it.
pub fn document() -> serde_json::Value {
    let (_, api) = crate::api_router().split_for_parts();
    finish(api)
}

/// The document as pretty JSON with a final newline: the committed `docs/openapi.json`.
/// Characters of the Basic Multilingual Plane beyond ASCII are spelled as `\u` escapes, so
/// that the invisible ones in patterns show in diffs; those beyond it stay UTF-8, since YAML
/// readers of JSON (openapi-spec-validator's) refuse the surrogate pairs that would spell them.
pub fn document_json() -> String {
    let pretty =
        serde_json::to_string_pretty(&document()).expect("the OpenAPI document serializes");
    let mut out = String::with_capacity(pretty.len() + 1);
    for c in pretty.chars() {
        match c as u32 {
            0..=0x7F | 0x10000.. => out.push(c),
            // Only strings hold non-ASCII characters in JSON text: escape them there.
            code => out.push_str(&format!("\\u{code:04x}")),
        }
    }
    out.push('\n');
    out
}

pub fn docs_router(api: serde_json::Value) -> Router<AppState> {
    Router::new().merge(SwaggerUi::new("/docs").external_url_unchecked("/api/openapi.json", api))
}
