//! A real OpenID provider for the tests: `oidc-provider` (the npm package, OpenID
//! Certified) run by `tests/oidc/provider.js` on a local port with keys it makes at start,
//! and what the tests do with it: get tokens (client credentials, authorization code
//! through its own login form), rotate its keys, and sign with its keys the tokens it will
//! not mint itself (expired, for another audience, ...). `./scripts/test.sh` installs its
//! `node_modules` (`npm ci`); without them the tests fail and say so.

use std::{collections::HashMap, process::Stdio, time::Duration};

use autokey_api::auth::oidc::settings::OidcConfig;
use base64::{Engine, engine::general_purpose::URL_SAFE_NO_PAD};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use reqwest::{StatusCode, header};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::tools::workspace_root;

/// The audience the provider's access tokens name, and autokey's OIDC_AUDIENCE.
pub const AUDIENCE: &str = "https://autokey.test/api";
/// The console's client at the provider (a public client).
pub const CONSOLE_CLIENT: &str = "autokey-console";

/// One of the provider's signing keys, as `provider.js` wrote it.
#[derive(Deserialize, Clone, Debug)]
pub struct ProviderKey {
    pub alg: String,
    pub kid: String,
    pub pem: String,
    #[serde(rename = "publicJwk")]
    pub public_jwk: Value,
}

#[derive(Deserialize)]
struct KeysFile {
    keys: Vec<ProviderKey>,
}

pub struct Provider {
    pub issuer: String,
    keys_file: std::path::PathBuf,
    http: reqwest::Client,
    _dir: TempDir,
    _child: tokio::process::Child,
}

/// A directory removed on drop.
struct TempDir(std::path::PathBuf);

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

impl Provider {
    pub async fn start() -> Provider {
        let dir = workspace_root().join("tests/oidc");
        assert!(
            dir.join("node_modules/oidc-provider").exists(),
            "tests/oidc/node_modules is missing: run ./scripts/test.sh, or ./scripts/test-deps.sh \
             before cargo test"
        );
        let tmp = std::env::temp_dir().join(format!("autokey-oidc-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&tmp).unwrap();
        let keys_file = tmp.join("keys.json");
        let mut child = tokio::process::Command::new("node")
            .arg(dir.join("provider.js"))
            .args(["--audience", AUDIENCE, "--keys"])
            .arg(&keys_file)
            .current_dir(&dir)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            // The provider's own log, when a test needs it: AUTOKEY_OIDC_LOG=1.
            .stderr(match std::env::var_os("AUTOKEY_OIDC_LOG") {
                Some(_) => Stdio::inherit(),
                None => Stdio::null(),
            })
            .kill_on_drop(true)
            .spawn()
            .expect("cannot run node (./scripts/test-deps.sh installs it)");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let first = tokio::time::timeout(Duration::from_secs(20), lines.next_line())
            .await
            .expect("the OpenID provider did not start within 20 s")
            .unwrap()
            .expect("the OpenID provider exited at start");
        // The provider logs to stdout too: keep reading it, or its next log line kills it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let issuer = serde_json::from_str::<Value>(&first).unwrap()["issuer"]
            .as_str()
            .unwrap()
            .to_owned();
        Provider {
            issuer,
            keys_file,
            http: reqwest::Client::builder()
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            _dir: TempDir(tmp),
            _child: child,
        }
    }

    /// autokey's settings for this provider (the console's client included).
    pub fn config(&self) -> OidcConfig {
        let mut config = OidcConfig::new(vec![self.issuer.clone()], AUDIENCE);
        config.console_client_id = Some(CONSOLE_CLIENT.into());
        config
    }

    /// The provider's keys, newest first.
    pub fn keys(&self) -> Vec<ProviderKey> {
        let text = std::fs::read_to_string(&self.keys_file).unwrap();
        serde_json::from_str::<KeysFile>(&text).unwrap().keys
    }

    /// Its current key for `alg` (RS256, ES256, EdDSA).
    pub fn key(&self, alg: &str) -> ProviderKey {
        self.keys().into_iter().find(|k| k.alg == alg).unwrap()
    }

    /// An access token for a client-credentials client (storefront-rs256, ...).
    pub async fn client_credentials(&self, client: &str, secret: &str) -> String {
        let r = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth(client, Some(secret))
            .form(&[("grant_type", "client_credentials")])
            .send()
            .await
            .unwrap();
        assert_eq!(
            r.status(),
            StatusCode::OK,
            "client credentials for {client}"
        );
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// An access token for account `login`, through the Authorization Code flow with PKCE
    /// of client seller-cli, signing in on the provider's own login form.
    pub async fn authorization_code(&self, login: &str) -> String {
        let verifier = URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>());
        let challenge = URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()));
        let redirect = "http://127.0.0.1/cb";
        let mut jar = Jar::default();
        let start = format!(
            "{}/auth?client_id=seller-cli&response_type=code&scope=openid&redirect_uri={}\
             &code_challenge={challenge}&code_challenge_method=S256&state=s&nonce=n",
            self.issuer,
            urlencode(redirect)
        );
        let interaction = jar.follow(&self.http, self.http.get(start)).await;
        let back = jar
            .follow(
                &self.http,
                self.http.post(&interaction).form(&[
                    ("prompt", "login"),
                    ("login", login),
                    ("password", "any"),
                ]),
            )
            .await;
        let callback = jar.follow(&self.http, self.http.get(&back)).await;
        let code = url::Url::parse(&callback)
            .unwrap()
            .query_pairs()
            .find(|(k, _)| k == "code")
            .map(|(_, v)| v.into_owned())
            .unwrap_or_else(|| panic!("no code in {callback}"));
        let r = self
            .http
            .post(format!("{}/token", self.issuer))
            .basic_auth("seller-cli", Some("secret-cli"))
            .form(&[
                ("grant_type", "authorization_code"),
                ("code", &code),
                ("redirect_uri", redirect),
                ("code_verifier", &verifier),
            ])
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::OK);
        r.json::<Value>().await.unwrap()["access_token"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// New signing keys (the old ones stay published); returns the new kids.
    pub async fn rotate(&self) -> Vec<String> {
        let r = self
            .http
            .post(format!("{}/__test/rotate", self.issuer))
            .send()
            .await
            .unwrap();
        let kids = r.json::<Value>().await.unwrap()["kids"].clone();
        serde_json::from_value(kids).unwrap()
    }

    /// Registers the console's redirect URIs (the api's port is known after the provider's).
    pub async fn set_console_redirect_uris(&self, uris: &[String]) {
        let r = self
            .http
            .post(format!("{}/__test/redirect-uris", self.issuer))
            .json(&uris)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::NO_CONTENT);
    }

    /// Requests the provider has had for its key set.
    pub async fn jwks_hits(&self) -> u64 {
        let r = self
            .http
            .get(format!("{}/__test/jwks-hits", self.issuer))
            .send()
            .await
            .unwrap();
        r.json::<Value>().await.unwrap()["hits"].as_u64().unwrap()
    }

    /// Claims of a valid access token of this provider for `sub` with `role`.
    pub fn claims(&self, sub: &str, role: Option<&str>) -> Value {
        let now = chrono::Utc::now().timestamp();
        let mut claims = json!({
            "iss": self.issuer, "sub": sub, "aud": AUDIENCE,
            "iat": now, "exp": now + 600, "jti": uuid::Uuid::new_v4().to_string(),
        });
        if let Some(role) = role {
            claims["autokey_role"] = role.into();
        }
        claims
    }

    /// `claims` signed with the provider's own `alg` key, its kid in the header.
    pub fn sign(&self, alg: &str, claims: &Value) -> String {
        let key = self.key(alg);
        sign_with(&key, &key.kid, claims)
    }
}

/// `claims` signed with `key`, naming `kid`.
pub fn sign_with(key: &ProviderKey, kid: &str, claims: &Value) -> String {
    let (alg, encoding) = match key.alg.as_str() {
        "RS256" => (
            Algorithm::RS256,
            EncodingKey::from_rsa_pem(key.pem.as_bytes()),
        ),
        "ES256" => (
            Algorithm::ES256,
            EncodingKey::from_ec_pem(key.pem.as_bytes()),
        ),
        "EdDSA" => (
            Algorithm::EdDSA,
            EncodingKey::from_ed_pem(key.pem.as_bytes()),
        ),
        other => panic!("no such algorithm {other}"),
    };
    let mut header = Header::new(alg);
    header.kid = Some(kid.to_owned());
    jsonwebtoken::encode(&header, claims, &encoding.expect("the provider's key")).unwrap()
}

/// A JWT with any header (alg none, HS256 ...) and signature, built by hand.
pub fn raw_jwt(header: &Value, claims: &Value, signature: &[u8]) -> String {
    format!(
        "{}.{}.{}",
        URL_SAFE_NO_PAD.encode(header.to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string()),
        URL_SAFE_NO_PAD.encode(signature)
    )
}

pub fn urlencode(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

/// The provider's cookies, sent back on every request to it (their paths are ignored: the
/// provider is the only site this jar talks to).
#[derive(Default)]
pub struct Jar(HashMap<String, String>);

impl Jar {
    pub fn keep(&mut self, response: &reqwest::Response) {
        for value in response.headers().get_all(header::SET_COOKIE) {
            let Ok(value) = value.to_str() else { continue };
            let pair = value.split(';').next().unwrap_or("");
            if let Some((name, v)) = pair.split_once('=') {
                self.0.insert(name.trim().to_owned(), v.trim().to_owned());
            }
        }
    }

    pub fn header(&self) -> String {
        self.0
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("; ")
    }

    /// Sends `request` with the jar's cookies; returns where it redirects (absolute).
    pub async fn follow(
        &mut self,
        http: &reqwest::Client,
        request: reqwest::RequestBuilder,
    ) -> String {
        let request = request
            .header(header::COOKIE, self.header())
            .build()
            .unwrap();
        let url = request.url().clone();
        let r = http.execute(request).await.unwrap();
        self.keep(&r);
        let status = r.status();
        let location = r
            .headers()
            .get(header::LOCATION)
            .map(|l| l.to_str().unwrap().to_owned());
        let location =
            location.unwrap_or_else(|| panic!("{url} answered {status} without a redirect"));
        url.join(&location).unwrap().to_string()
    }
}
