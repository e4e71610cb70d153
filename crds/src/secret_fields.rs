//! Every Secret reference in a spec, found by type rather than from a list of
//! fields: the spec is walked alongside its JSON schema, and each value whose
//! schema is [`SecretKeyRef`], [`SecretRef`] or [`CredentialsRef`] is a
//! reference. A Secret field added to any spec type is found with no other
//! change, so the controller cannot forget to mount it.

use std::sync::LazyLock;

use schemars::{JsonSchema, generate::SchemaSettings};
use serde_json::{Map, Value as Schema};
use serde_yaml::Value;

use crate::{CredentialsRef, SecretKeyRef, SecretRef, StreamPipelineSpec};

/// What a field references, by its type.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReferencedSecret {
    /// One key of a Secret.
    Key(SecretKeyRef),
    /// A user name and a password in a Secret.
    Credentials(CredentialsRef),
    /// A whole Secret.
    Whole(SecretRef),
}

/// One Secret reference of a spec.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SecretField {
    /// Dotted path of the field, e.g. `spec.sinks[0].clickhouse.credentialsSecretRef`.
    pub path: String,
    pub secret: ReferencedSecret,
}

/// The spec's schema with its definitions kept by name (not inlined), so
/// that the Secret reference types are recognisable wherever they are used.
static SPEC_SCHEMA: LazyLock<Schema> = LazyLock::new(|| {
    SchemaSettings::draft2020_12()
        .into_generator()
        .into_root_schema_for::<StreamPipelineSpec>()
        .to_value()
});

/// The spec could not be turned into a value to walk (a bug, not bad input).
#[derive(Debug, thiserror::Error)]
#[error("cannot list the Secret references of the spec: {0}")]
pub struct SecretFieldsError(#[from] serde_yaml::Error);

/// All Secret references of `spec`, in the order of the spec's fields (the
/// walk goes over a YAML value, which keeps that order, so the pods the
/// controller renders keep theirs across versions).
pub fn secret_fields(spec: &StreamPipelineSpec) -> Result<Vec<SecretField>, SecretFieldsError> {
    let value = serde_yaml::to_value(spec)?;
    let mut found = Vec::new();
    let walk = Walk {
        definitions: SPEC_SCHEMA.get("$defs").and_then(Schema::as_object),
    };
    walk.value(&SPEC_SCHEMA, &value, "spec".into(), &mut found)?;
    // A value that matches several alternatives of a schema is seen once per
    // alternative.
    let mut seen = std::collections::HashSet::new();
    found.retain(|field| seen.insert(field.path.clone()));
    Ok(found)
}

struct Walk<'s> {
    definitions: Option<&'s Map<String, Schema>>,
}

impl Walk<'_> {
    fn value(
        &self,
        schema: &Schema,
        value: &Value,
        path: String,
        found: &mut Vec<SecretField>,
    ) -> Result<(), serde_yaml::Error> {
        if value.is_null() {
            return Ok(());
        }
        if let Some(reference) = schema.get("$ref").and_then(Schema::as_str) {
            let name = reference.rsplit('/').next().unwrap_or(reference);
            let secret = if name == SecretKeyRef::schema_name() {
                Some(ReferencedSecret::Key(serde_yaml::from_value(
                    value.clone(),
                )?))
            } else if name == CredentialsRef::schema_name() {
                Some(ReferencedSecret::Credentials(serde_yaml::from_value(
                    value.clone(),
                )?))
            } else if name == SecretRef::schema_name() {
                Some(ReferencedSecret::Whole(serde_yaml::from_value(
                    value.clone(),
                )?))
            } else {
                None
            };
            if let Some(secret) = secret {
                found.push(SecretField { path, secret });
                return Ok(());
            }
            if let Some(definition) = self.definitions.and_then(|d| d.get(name)) {
                self.value(definition, value, path.clone(), found)?;
            }
        }
        for combinator in ["allOf", "anyOf", "oneOf"] {
            for alternative in schema
                .get(combinator)
                .and_then(Schema::as_array)
                .into_iter()
                .flatten()
            {
                self.value(alternative, value, path.clone(), found)?;
            }
        }
        match value {
            Value::Mapping(fields) => {
                let properties = schema.get("properties").and_then(Schema::as_object);
                let additional = schema.get("additionalProperties");
                for (name, field) in fields {
                    let Some(name) = name.as_str() else { continue };
                    let field_schema = properties
                        .and_then(|p| p.get(name))
                        .or(additional.filter(|a| a.is_object()));
                    if let Some(field_schema) = field_schema {
                        self.value(field_schema, field, format!("{path}.{name}"), found)?;
                    }
                }
            }
            Value::Sequence(items) => {
                if let Some(item_schema) = schema.get("items") {
                    for (i, item) in items.iter().enumerate() {
                        self.value(item_schema, item, format!("{path}[{i}]"), found)?;
                    }
                }
            }
            _ => {}
        }
        Ok(())
    }
}
