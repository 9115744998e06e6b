//! The autokey role a verified JWT carries, from the claim `OIDC_ROLE_CLAIM` names: a
//! string (`"seller"`), or an array holding exactly one autokey role among the provider's
//! other roles (Keycloak's `realm_access.roles`, say), reached by a dotted path.

use autokey_shared::model::Role;
use serde_json::{Map, Value};

use crate::error::ApiError;

fn parse(name: &str) -> Option<Role> {
    match name {
        "seller" => Some(Role::Seller),
        "buyer" => Some(Role::Buyer),
        "storefront" => Some(Role::Storefront),
        "admin" => Some(Role::Admin),
        _ => None,
    }
}

/// The role of `claims` at `path`; a missing, unknown or ambiguous one is refused.
pub fn of(claims: &Map<String, Value>, path: &[String]) -> Result<Role, ApiError> {
    let name = path.join(".");
    let refuse = |why: String| super::refuse(why);
    let mut value = claims.get(&path[0]);
    for step in &path[1..] {
        value = value.and_then(|v| v.get(step));
    }
    match value {
        None | Some(Value::Null) => Err(refuse(format!("the token has no role claim ({name})"))),
        Some(Value::String(role)) => parse(role).ok_or_else(|| {
            refuse(format!(
                "role {role:?} ({name}) is not seller, buyer, storefront or admin"
            ))
        }),
        Some(Value::Array(items)) => {
            let mut roles = items.iter().filter_map(Value::as_str).filter_map(parse);
            match (roles.next(), roles.next()) {
                (Some(role), None) => Ok(role),
                (None, _) => Err(refuse(format!(
                    "the role claim ({name}) holds no autokey role"
                ))),
                (Some(_), Some(_)) => Err(refuse(format!(
                    "the role claim ({name}) holds more than one autokey role"
                ))),
            }
        }
        Some(_) => Err(refuse(format!("the role claim ({name}) is malformed"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn role(claims: Value, path: &str) -> Result<Role, String> {
        let path: Vec<String> = path.split('.').map(str::to_owned).collect();
        of(claims.as_object().unwrap(), &path).map_err(|e| e.to_string())
    }

    #[test]
    fn strings_arrays_and_paths() {
        assert_eq!(
            role(serde_json::json!({"r": "seller"}), "r"),
            Ok(Role::Seller)
        );
        assert_eq!(
            role(
                serde_json::json!({"realm_access": {"roles": ["offline", "storefront"]}}),
                "realm_access.roles"
            ),
            Ok(Role::Storefront)
        );
        assert!(
            role(serde_json::json!({}), "r")
                .unwrap_err()
                .contains("no role claim")
        );
        assert!(
            role(serde_json::json!({"r": "owner"}), "r")
                .unwrap_err()
                .contains("\"owner\"")
        );
        assert!(
            role(serde_json::json!({"r": ["seller", "buyer"]}), "r")
                .unwrap_err()
                .contains("more than one")
        );
        assert!(
            role(serde_json::json!({"r": ["x"]}), "r")
                .unwrap_err()
                .contains("no autokey role")
        );
        assert!(
            role(serde_json::json!({"r": 3}), "r")
                .unwrap_err()
                .contains("malformed")
        );
    }
}
