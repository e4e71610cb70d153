//! Validation rules shared by several fields, so each limit is written once.
//! The API server runs them at `kubectl apply`; `parse_pipeline` runs them
//! the same way outside the cluster.

use kube::core::Rule;
use schemars::Schema;

/// URI schemes the runner opens for checkpoints, Delta tables and dead-letter
/// prefixes (see `runner/src/storage.rs`); a URI without `://` is a local path.
pub const OBJECT_STORE_SCHEMES: &[&str] = &["s3", "file"];

/// Longest URI or URL accepted anywhere in a spec.
pub const MAX_URL_LENGTH: u32 = 2048;

/// Longest pipeline name: the StatefulSet's `controller-revision-hash` label,
/// `<name>-<hash of up to 10 characters>`, must fit a 63-character label value.
pub const MAX_PIPELINE_NAME_LENGTH: usize = 52;

/// Properties that carry secrets, refused in `kafka.properties`.
pub const SECRET_KAFKA_PROPERTIES: &[&str] = &[
    "sasl.password",
    "sasl.jaas.config",
    "sasl.oauthbearer.client.secret",
    "ssl.key.password",
    "ssl.key.pem",
    "ssl.keystore.password",
    "ssl.truststore.password",
];

/// Request headers (lower case) that carry credentials, refused as literal
/// values: they must come from a Secret (`valueFrom`).
pub const CREDENTIAL_HEADERS: &[&str] = &[
    "authorization",
    "proxy-authorization",
    "cookie",
    "x-api-key",
    "api-key",
    "x-auth-token",
];

/// A CEL list literal of strings: `['a', 'b']`.
fn cel_list(items: &[&str]) -> String {
    let quoted: Vec<String> = items.iter().map(|item| format!("'{item}'")).collect();
    format!("[{}]", quoted.join(", "))
}

/// On a duration field: zero would mean nothing.
pub fn positive_duration() -> Rule {
    Rule::new("duration(self) > duration('0s')").message("must be greater than zero")
}

/// On an object-store URI field: a local path or a scheme the runner opens.
pub fn object_store_uri() -> Rule {
    let schemes: Vec<String> = OBJECT_STORE_SCHEMES
        .iter()
        .map(|scheme| format!("self.startsWith('{scheme}://')"))
        .collect();
    let names: Vec<String> = OBJECT_STORE_SCHEMES
        .iter()
        .map(|scheme| format!("{scheme}://"))
        .collect();
    Rule::new(format!("!self.contains('://') || {}", schemes.join(" || "))).message(
        format!(
            "must be a local path or a URI starting with {}: the runner opens no other scheme",
            names.join(" or ")
        )
        .as_str(),
    )
}

/// On a URL field of an HTTP service.
pub fn http_url() -> Rule {
    Rule::new(r"self.matches('^https?://[^/?#\\s]+')")
        .message("must be an http:// or https:// URL with a host, such as http://service:8123")
}

/// On the Elasticsearch index: its naming rules, so a bad name fails at apply
/// instead of at the first write.
pub fn elasticsearch_index() -> Rule {
    Rule::new(
        r#"!self.matches('[\\p{Lu}\\\\/*?"<>| ,#:]') && !self.matches('^[-_+]') && self != '.' && self != '..' && size(bytes(self)) <= 255"#,
    )
    .message(
        "an Elasticsearch index name must be lower case, contain none of \\ / * ? \" < > | space , # :, \
         not start with -, _ or +, not be . or .., and be at most 255 bytes",
    )
}

/// On `kafka.properties`.
pub fn no_secret_kafka_properties() -> Rule {
    Rule::new(format!(
        "!{}.exists(k, k in self)",
        cel_list(SECRET_KAFKA_PROPERTIES)
    ))
    .message(format!(
        "kafka.properties must not hold secrets ({}): use sasl.secretRef and the tls secret references",
        SECRET_KAFKA_PROPERTIES.join(", ")
    )
    .as_str())
}

/// On one REST header.
pub fn no_literal_credential_header() -> Rule {
    Rule::new(format!(
        "!has(self.value) || !(self.name.lowerAscii() in {})",
        cel_list(CREDENTIAL_HEADERS)
    ))
    .message(format!(
        "a credential header ({}) must take its value from a Secret: use valueFrom instead of value",
        CREDENTIAL_HEADERS.join(", ")
    )
    .as_str())
    .field_path(".value")
}

/// The Kubernetes quantity format (`500m`, `2Gi`, `1e3`), without a sign:
/// resource requests and limits are never negative.
pub const QUANTITY_PATTERN: &str = r"^(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE][+-]?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$";

/// Adds [`QUANTITY_PATTERN`] to every int-or-string value under `schema`
/// (the `limits` and `requests` of a `ResourceRequirements`), as
/// controller-gen does for `resource.Quantity`; the API server checks it, so
/// `memory: lots` fails at apply instead of when the StatefulSet is created.
pub fn quantity_pattern(schema: &mut Schema) {
    fn walk(value: &mut serde_json::Value) {
        let Some(object) = value.as_object_mut() else {
            return;
        };
        if object.get("x-kubernetes-int-or-string") == Some(&serde_json::Value::Bool(true)) {
            object.insert("pattern".into(), QUANTITY_PATTERN.into());
        }
        for child in object.values_mut() {
            walk(child);
        }
    }
    if let Some(object) = schema.as_object_mut() {
        for value in object.values_mut() {
            walk(value);
        }
    }
}
