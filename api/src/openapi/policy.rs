//! What every operation shares, written into the document once instead of on each handler:
//! operation ids that read as method names (`create_order` -> `createOrder`), the error
//! responses that layers in front of every route can give (429 with `Retry-After`, 503;
//! 401 where a token is required; 400, 413 and 415 where there is input), and a
//! description for every response (OpenAPI requires one).

use serde_json::{Map, Value, json};

const METHODS: [&str; 8] = [
    "get", "put", "post", "delete", "patch", "head", "options", "trace",
];

pub fn apply(doc: &mut Value) {
    let Some(paths) = doc.get_mut("paths").and_then(Value::as_object_mut) else {
        return;
    };
    for item in paths.values_mut() {
        for method in METHODS {
            if let Some(op) = item.get_mut(method).and_then(Value::as_object_mut) {
                operation(op);
            }
        }
    }
}

/// Operations that read their body as bytes (to check a signature over them) and answer
/// any content type: no 415.
const RAW_BODY: [&str; 1] = ["paymentWebhook"];

fn operation(op: &mut Map<String, Value>) {
    if let Some(Value::String(id)) = op.get_mut("operationId") {
        *id = camel_case(id);
    }
    let raw_body = op
        .get("operationId")
        .and_then(Value::as_str)
        .is_some_and(|id| RAW_BODY.contains(&id));
    let secured = op
        .get("security")
        .and_then(Value::as_array)
        .is_some_and(|s| {
            s.iter()
                .any(|r| r.as_object().is_some_and(|r| !r.is_empty()))
        });
    let has_params = op
        .get("parameters")
        .and_then(Value::as_array)
        .is_some_and(|p| !p.is_empty());
    for param in op
        .get_mut("parameters")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
    {
        not_null(param);
    }
    let json_body = op
        .get("requestBody")
        .and_then(|b| b.get("content"))
        .and_then(Value::as_object)
        .is_some_and(|c| c.contains_key("application/json"));
    let responses = op
        .entry("responses")
        .or_insert_with(|| json!({}))
        .as_object_mut()
        .expect("responses is an object");
    let mut add = |status: &str| {
        responses
            .entry(status)
            .or_insert_with(|| error_response(status));
    };
    if has_params || json_body {
        add("400");
    }
    if secured {
        add("401");
    }
    if json_body {
        add("413");
        if !raw_body {
            add("415");
        }
    }
    add("429");
    add("503");
    for (status, response) in responses.iter_mut() {
        let Some(response) = response.as_object_mut() else {
            continue;
        };
        let empty = response
            .get("description")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty);
        if empty {
            response.insert("description".into(), default_description(status).into());
        }
        if status == "429" {
            response
                .entry("headers")
                .or_insert_with(|| json!({}))
                .as_object_mut()
                .expect("headers is an object")
                .entry("Retry-After")
                .or_insert_with(retry_after);
        }
    }
}

/// A header or path parameter is absent or a string, never null (an optional one is
/// generated from an `Option` as "string or null").
fn not_null(param: &mut Value) {
    if !matches!(param["in"].as_str(), Some("header" | "path")) {
        return;
    }
    if let Some(Value::Array(types)) = param.get_mut("schema").and_then(|s| s.get_mut("type")) {
        types.retain(|t| t != "null");
        if let [only] = types.as_slice() {
            let only = only.clone();
            param["schema"]["type"] = only;
        }
    }
}

fn error_response(status: &str) -> Value {
    json!({
        "description": default_description(status),
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/ErrorBody"}}},
    })
}

fn retry_after() -> Value {
    json!({
        "description": "Seconds to wait before trying again.",
        "required": true,
        "schema": {"type": "integer", "minimum": 1},
    })
}

/// What each status means everywhere in this API (handlers say more where there is more).
fn default_description(status: &str) -> &'static str {
    match status {
        "200" => "OK.",
        "201" => "Created.",
        "202" => "Accepted; not finished yet.",
        "400" => "`validation_failed`: a malformed body, parameter or id.",
        "401" => {
            "`unauthorized`: no bearer token, or one that is malformed, unknown, revoked or \
             (a JWT) refused; `WWW-Authenticate` says why."
        }
        "403" => "`forbidden`: this token's role may not use this route.",
        "404" => "`not_found`: no such object, or one the caller may not see.",
        "409" => "`conflict`: the object's state does not allow this.",
        "413" => {
            "`payload_too_large`: the request body is larger than this route accepts (2 MiB for JSON)."
        }
        "415" => "`unsupported_media_type`: the body is not `application/json`.",
        "429" => {
            "`rate_limited`: too many requests from this token (or, without one, this client \
             address); retry after `Retry-After` seconds."
        }
        "503" => {
            "`unavailable`: the service sheds load, the request ran past its deadline, or the \
             database is unreachable; retry later."
        }
        _ => "See the error code.",
    }
}

/// `create_order` -> `createOrder`; ids already in camelCase are kept.
fn camel_case(id: &str) -> String {
    let mut out = String::with_capacity(id.len());
    let mut upper = false;
    for c in id.chars() {
        if c == '_' {
            upper = !out.is_empty();
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_become_camel_case() {
        assert_eq!(camel_case("create_order"), "createOrder");
        assert_eq!(camel_case("payOrder"), "payOrder");
        assert_eq!(camel_case("healthz"), "healthz");
    }

    #[test]
    fn every_operation_gets_the_shared_errors_and_descriptions() {
        let mut doc = json!({"paths": {"/x/{id}": {"post": {
            "operationId": "do_it",
            "security": [{"bearer": []}],
            "parameters": [{"name": "id", "in": "path"},
                {"name": "k", "in": "header", "schema": {"type": ["string", "null"]}}],
            "requestBody": {"content": {"application/json": {}}},
            "responses": {"200": {}},
        }}}});
        apply(&mut doc);
        let op = &doc["paths"]["/x/{id}"]["post"];
        assert_eq!(op["operationId"], "doIt");
        for status in ["200", "400", "401", "413", "415", "429", "503"] {
            assert!(
                op["responses"][status]["description"].is_string(),
                "{status}"
            );
        }
        assert!(op["responses"]["429"]["headers"]["Retry-After"].is_object());
        assert_eq!(op["parameters"][1]["schema"]["type"], "string");
    }
}
