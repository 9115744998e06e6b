//! Typed configuration read from the environment (and `.env`), per OPERATIONS.md.
//! Secrets are wrapped in `SecretBox` so they cannot be printed or logged by accident.

use std::{collections::HashMap, env, fmt};

use secrecy::SecretBox;

use crate::vault::{KeyMaterial, Vault};

/// A setting that is missing or malformed. Its display is the one line start-up prints.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("configuration error: {name} is required but not set")]
    Missing { name: &'static str },
    #[error("configuration error: {name} is malformed: {why}")]
    Malformed { name: &'static str, why: String },
}

fn var(name: &'static str) -> Option<String> {
    env::var(name).ok().filter(|v| !v.trim().is_empty())
}

fn required(name: &'static str) -> Result<String, ConfigError> {
    var(name).ok_or(ConfigError::Missing { name })
}

fn malformed(name: &'static str, why: impl Into<String>) -> ConfigError {
    ConfigError::Malformed {
        name,
        why: why.into(),
    }
}

/// Loads `.env` from the working directory if present; real environment variables win.
/// Call before parsing the command line: settings with an `env` are read by clap.
pub fn load_dotenv() {
    let _ = dotenvy::dotenv();
}

/// Parses the command line and the settings clap reads from the environment. A malformed
/// setting stops the process with the one line start-up promises (OPERATIONS.md), naming
/// the variable; `--help`, `--version` and usage errors behave as clap's.
pub fn parse_args<C: clap::Parser>() -> C {
    C::try_parse().unwrap_or_else(|e| exit_on_bad_setting(&C::command(), e))
}

/// Parses the arguments `A` from the environment alone (their defaults otherwise), as
/// when a command runs without its subcommand on the command line.
pub fn args_from_env<A: clap::Args + clap::FromArgMatches>(name: &'static str) -> A {
    let command = A::augment_args(clap::Command::new(name).no_binary_name(true));
    command
        .clone()
        .try_get_matches_from(std::iter::empty::<String>())
        .and_then(|m| A::from_arg_matches(&m))
        .unwrap_or_else(|e| exit_on_bad_setting(&command, e))
}

fn exit_on_bad_setting(command: &clap::Command, err: clap::Error) -> ! {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        err.exit()
    }
    let arg = match err.get(ContextKind::InvalidArg) {
        Some(ContextValue::String(s)) => s.clone(),
        _ => String::new(),
    };
    let name = env_of(command, &arg).unwrap_or(arg);
    let why = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_else(|| "not a valid value".to_owned());
    eprintln!("configuration error: {name} is malformed: {why}");
    std::process::exit(1)
}

/// The environment variable of the argument clap names `--long <VALUE>`, searching
/// subcommands too.
fn env_of(command: &clap::Command, shown: &str) -> Option<String> {
    let long = shown.trim_start_matches("--").split([' ', '=']).next()?;
    for arg in command.get_arguments() {
        if arg.get_long() == Some(long) {
            return arg.get_env().map(|e| e.to_string_lossy().into_owned());
        }
    }
    command.get_subcommands().find_map(|c| env_of(c, shown))
}

pub struct DatabaseConfig {
    pub url: SecretBox<String>,
}

impl fmt::Debug for DatabaseConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DatabaseConfig { url: [redacted] }")
    }
}

impl DatabaseConfig {
    pub fn from_env() -> Result<Self, ConfigError> {
        let url = required("DATABASE_URL")?;
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            return Err(malformed(
                "DATABASE_URL",
                "expected a postgres:// or postgresql:// URL",
            ));
        }
        Ok(Self {
            url: SecretBox::new(Box::new(url)),
        })
    }
}

fn parse_hex32(name: &'static str, value: &str) -> Result<[u8; 32], ConfigError> {
    let bytes = hex::decode(value.trim())
        .map_err(|_| malformed(name, "expected 64 hexadecimal characters"))?;
    bytes
        .try_into()
        .map_err(|_| malformed(name, "expected 64 hexadecimal characters (32 bytes)"))
}

/// Builds the vault from ENCRYPTION_KEY, ENCRYPTION_KEY_ID, ENCRYPTION_KEYS_RETIRED and
/// FINGERPRINT_KEY.
pub fn vault_from_env() -> Result<Vault, ConfigError> {
    let current = parse_hex32("ENCRYPTION_KEY", &required("ENCRYPTION_KEY")?)?;
    let current_id = var("ENCRYPTION_KEY_ID").unwrap_or_else(|| "k1".to_owned());
    if !valid_key_id(&current_id) {
        return Err(malformed(
            "ENCRYPTION_KEY_ID",
            "expected 1-32 letters, digits, '-' or '_'",
        ));
    }
    let mut retired = HashMap::new();
    if let Some(list) = var("ENCRYPTION_KEYS_RETIRED") {
        for entry in list.split(',').map(str::trim).filter(|e| !e.is_empty()) {
            let (id, hex) = entry
                .split_once(':')
                .ok_or_else(|| malformed("ENCRYPTION_KEYS_RETIRED", "expected id:hex,id:hex"))?;
            if !valid_key_id(id) {
                return Err(malformed(
                    "ENCRYPTION_KEYS_RETIRED",
                    "a key id is not 1-32 letters, digits, '-' or '_'",
                ));
            }
            if id == current_id {
                // It would shadow the current key, or be shadowed by it: one of two keys
                // named alike could never decrypt what it sealed.
                return Err(malformed(
                    "ENCRYPTION_KEYS_RETIRED",
                    format!("key id {id} is also ENCRYPTION_KEY_ID; give the new key a new id"),
                ));
            }
            let key = parse_hex32("ENCRYPTION_KEYS_RETIRED", hex)?;
            if retired
                .insert(id.to_owned(), KeyMaterial::new(key))
                .is_some()
            {
                return Err(malformed(
                    "ENCRYPTION_KEYS_RETIRED",
                    format!("key id {id} is listed twice"),
                ));
            }
        }
    }
    let fingerprint = parse_hex32("FINGERPRINT_KEY", &required("FINGERPRINT_KEY")?)?;
    Ok(Vault::new(
        current_id,
        KeyMaterial::new(current),
        retired,
        KeyMaterial::new(fingerprint),
    ))
}

fn valid_key_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
}

/// The Standard Webhooks signing secret (`whsec_<base64>`), decoded.
pub fn webhook_secret_from_env() -> Result<Option<SecretBox<Vec<u8>>>, ConfigError> {
    const NAME: &str = "PAYMENT_WEBHOOK_SECRET";
    let Some(raw) = var(NAME) else {
        return Ok(None);
    };
    let b64 = raw
        .trim()
        .strip_prefix("whsec_")
        .ok_or_else(|| malformed(NAME, "expected whsec_<base64>"))?;
    use base64::Engine;
    let bytes = base64::engine::general_purpose::STANDARD
        .decode(b64)
        .map_err(|_| malformed(NAME, "the part after whsec_ is not valid base64"))?;
    if bytes.len() < 16 {
        return Err(malformed(NAME, "the secret must be at least 16 bytes"));
    }
    Ok(Some(SecretBox::new(Box::new(bytes))))
}

/// The bearer token Prometheus presents to `GET /metrics` (METRICS_TOKEN), if set.
pub fn metrics_token_from_env() -> Result<Option<SecretBox<String>>, ConfigError> {
    let Some(raw) = var("METRICS_TOKEN") else {
        return Ok(None);
    };
    if raw.trim().len() < 16 {
        return Err(malformed("METRICS_TOKEN", "use at least 16 characters"));
    }
    Ok(Some(SecretBox::new(Box::new(raw.trim().to_owned()))))
}

/// Prints fresh secrets in `.env` format (the `keygen` command).
pub fn generate_env_secrets() -> String {
    use base64::Engine;
    use rand::RngCore;
    let mut rng = rand::rngs::OsRng;
    let mut hex32 = || {
        let mut b = [0u8; 32];
        rng.fill_bytes(&mut b);
        hex::encode(b)
    };
    let enc = hex32();
    let fp = hex32();
    let mut wh = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut wh);
    format!(
        "ENCRYPTION_KEY={enc}\nENCRYPTION_KEY_ID=k1\nFINGERPRINT_KEY={fp}\nPAYMENT_WEBHOOK_SECRET=whsec_{}\n",
        base64::engine::general_purpose::STANDARD.encode(wh)
    )
}
