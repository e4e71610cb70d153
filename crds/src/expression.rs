//! CEL expressions of transforms, checked before anything runs. The API server
//! cannot compile them (they are plain strings to it), so the controller and
//! `sluice-runner run` both call [`check_expressions`] and refuse a pipeline
//! with one that cannot run, naming `spec.transforms[i]`; the runner compiles
//! each expression with [`compile`], the same function.
//!
//! The `cel` crate parses but has no type checker, so the check is: the
//! expression parses, and an expression that reads no event field (a constant,
//! such as `'a' + 1`) evaluates, to a boolean when it is a filter.

use cel::{Context, Program, Value};

use crate::Transform;

/// A transform whose CEL expression cannot run.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{field}: invalid CEL expression {expression:?}: {message}")]
pub struct InvalidExpression {
    /// Dotted path of the expression, such as `spec.transforms[2].filter`.
    pub field: String,
    pub expression: String,
    /// What is wrong, with the line and column for a syntax error.
    pub message: String,
}

/// Every transform expression of a spec that cannot run, in spec order.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
pub struct InvalidExpressions(pub Vec<InvalidExpression>);

/// Checks every expression of `transforms` (the spec's `transforms`).
pub fn check_expressions(transforms: &[Transform]) -> Result<(), InvalidExpressions> {
    let invalid = invalid_expressions(transforms);
    if invalid.is_empty() {
        Ok(())
    } else {
        Err(InvalidExpressions(invalid))
    }
}

/// Parses one CEL expression; the message gives the line and column of each
/// syntax error.
pub fn compile(expression: &str) -> Result<Program, String> {
    Program::compile(expression).map_err(|errors| {
        errors
            .errors
            .iter()
            .map(|e| format!("line {}, column {}: {}", e.pos.0, e.pos.1 + 1, e.msg))
            .collect::<Vec<_>>()
            .join("; ")
    })
}

fn invalid_expressions(transforms: &[Transform]) -> Vec<InvalidExpression> {
    transforms
        .iter()
        .enumerate()
        .flat_map(|(i, transform)| {
            let filter = transform
                .filter
                .as_deref()
                .map(|e| (format!("spec.transforms[{i}].filter"), e, true));
            let compute = transform.compute.as_ref().map(|c| {
                (
                    format!("spec.transforms[{i}].compute.expression"),
                    c.expression.as_str(),
                    false,
                )
            });
            filter.into_iter().chain(compute)
        })
        .filter_map(|(field, expression, is_filter)| {
            check(expression, is_filter)
                .err()
                .map(|message| InvalidExpression {
                    field,
                    expression: expression.to_owned(),
                    message,
                })
        })
        .collect()
}

fn check(expression: &str, is_filter: bool) -> Result<(), String> {
    let program = compile(expression)?;
    if !program.references().variables().is_empty() {
        // Its value depends on the event: the runner finds out per event.
        return Ok(());
    }
    match program.execute(&Context::default()) {
        Err(error) => Err(error.to_string()),
        Ok(Value::Bool(_)) => Ok(()),
        Ok(other) if is_filter => Err(format!(
            "a filter must be true or false, and this one is always a {:?}",
            other.type_of()
        )),
        Ok(_) => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ComputeField;

    fn filter(expression: &str) -> Transform {
        Transform {
            filter: Some(expression.into()),
            compute: None,
            dedup: None,
        }
    }

    fn compute(expression: &str) -> Transform {
        Transform {
            filter: None,
            compute: Some(ComputeField {
                field: "f".into(),
                expression: expression.into(),
            }),
            dedup: None,
        }
    }

    #[test]
    fn expressions_that_read_the_event_are_accepted() {
        let transforms = [
            filter("event_type != 'heartbeat'"),
            compute("value * 100.0"),
            filter("has(event.user) && size(event.user.name) > 0"),
            filter("true"),
            compute("1 + 2"),
        ];
        assert_eq!(invalid_expressions(&transforms), []);
    }

    #[test]
    fn a_syntax_error_names_the_transform_and_the_position() {
        let invalid = invalid_expressions(&[filter("true"), compute("value *")]);
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert_eq!(invalid[0].field, "spec.transforms[1].compute.expression");
        assert!(
            invalid[0].message.contains("line 1, column"),
            "{}",
            invalid[0]
        );
    }

    #[test]
    fn a_constant_that_cannot_be_evaluated_is_refused() {
        let invalid = invalid_expressions(&[filter("'a' + 1 == 2"), filter("nosuchfunction(1)")]);
        assert_eq!(invalid.len(), 2, "{invalid:?}");
        assert_eq!(invalid[0].field, "spec.transforms[0].filter");
        assert_eq!(invalid[1].field, "spec.transforms[1].filter");
    }

    #[test]
    fn a_filter_that_is_never_a_boolean_is_refused() {
        let invalid = invalid_expressions(&[filter("'click'")]);
        assert_eq!(invalid.len(), 1, "{invalid:?}");
        assert!(
            invalid[0].message.contains("true or false"),
            "{}",
            invalid[0]
        );
    }
}
