//! Transforms: CEL filters and computed fields, and dedup by id, applied in
//! order to the decoded fields of each event. Top-level fields are CEL
//! variables (`event_type != 'heartbeat'`); `event` is the whole event as a
//! map. CEL is strictly typed: JSON numbers with a fraction or exponent are
//! doubles, others ints, so write `value * 100.0` for a double field.

mod dedup;

use std::{borrow::Cow, sync::Arc};

use cel::{Context, Program, Value};
use sluice_crds::{DedupTransform, Transform};

pub use self::dedup::{Clock, Dedup, DedupState};
use crate::decode::{Decoder, FieldValue, TIMESTAMP_SLOT};

/// Name of the CEL variable holding the whole event.
pub const EVENT_VARIABLE: &str = "event";

/// Why a transform could not be compiled.
#[derive(Debug, thiserror::Error)]
pub enum TransformError {
    #[error("spec.transforms[{index}]: invalid CEL expression {expression:?}: {message}")]
    Compile {
        index: usize,
        expression: String,
        message: String,
    },
    #[error("spec.transforms[{index}] sets none of filter, compute or dedup")]
    Empty { index: usize },
    #[error("spec.transforms[{index}]: the field {field} is not decoded")]
    NotDecoded { index: usize, field: String },
}

enum Step {
    Filter(CelStep),
    Compute {
        slot: usize,
        cel: CelStep,
    },
    /// `memory`: the index of the step's [`Dedup`] in [`DedupMemory`].
    Dedup {
        slot: usize,
        memory: usize,
    },
}

/// A compiled CEL expression and what it reads.
struct CelStep {
    program: Program,
    /// Slots of the top-level fields the expression reads, with their names.
    variables: Vec<(String, usize)>,
    reads_event: bool,
    expression: String,
}

impl CelStep {
    fn compile(
        index: usize,
        expression: &str,
        slot: impl Fn(&str) -> Option<usize>,
    ) -> Result<Self, TransformError> {
        let program = compile(index, expression)?;
        let references = program.references();
        let reads_event = references.has_variable(EVENT_VARIABLE);
        let variables = references
            .variables()
            .into_iter()
            .filter(|v| *v != EVENT_VARIABLE)
            .filter_map(|v| Some((v.to_owned(), slot(v)?)))
            .collect();
        Ok(Self {
            program,
            variables,
            reads_event,
            expression: expression.to_owned(),
        })
    }

    /// Runs the expression over one event's fields; `event` is the raw event,
    /// parsed only when the expression reads `event`.
    fn evaluate(&self, event: &[u8], fields: &[FieldValue<'_>]) -> Result<Value, String> {
        let mut context = Context::default();
        for (name, slot) in &self.variables {
            if let Some(value) = to_cel(&fields[*slot])? {
                context.add_variable_from_value(name.as_str(), value);
            }
        }
        if self.reads_event {
            let whole: serde_json::Value =
                serde_json::from_slice(event).map_err(|e| format!("invalid JSON: {e}"))?;
            context
                .add_variable(EVENT_VARIABLE, whole)
                .map_err(|e| format!("cannot read the event: {e}"))?;
        }
        self.program.execute(&context).map_err(|e| self.failed(&e))
    }

    /// A dead-letter reason naming the expression.
    fn failed(&self, error: &dyn std::fmt::Display) -> String {
        format!("{}: {error}", self.expression)
    }
}

/// The transforms of a pipeline, compiled. Immutable, so that workers can
/// share them; the dedup steps' memory is apart, in [`DedupMemory`].
pub struct Transforms {
    steps: Vec<Step>,
}

/// What the dedup steps remember, in step order. Events must go through it
/// one at a time, in order: it is what makes a dedup pipeline sequential.
#[derive(Default)]
pub struct DedupMemory {
    dedups: Vec<Dedup>,
}

/// What the transforms decided for one event.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    Keep,
    /// A filter said no.
    Drop,
    /// A dedup step had seen its id.
    Duplicate,
}

/// What one transform does, as its spec says.
enum Kind<'a> {
    Cel {
        expression: &'a str,
        /// The field a `compute` step writes.
        target: Option<&'a str>,
    },
    Dedup(&'a DedupTransform),
}

fn kind_of(index: usize, transform: &Transform) -> Result<Kind<'_>, TransformError> {
    match (&transform.filter, &transform.compute, &transform.dedup) {
        (Some(filter), _, _) => Ok(Kind::Cel {
            expression: filter,
            target: None,
        }),
        (None, Some(compute), _) => Ok(Kind::Cel {
            expression: &compute.expression,
            target: Some(&compute.field),
        }),
        (None, None, Some(dedup)) => Ok(Kind::Dedup(dedup)),
        (None, None, None) => Err(TransformError::Empty { index }),
    }
}

/// The fields a set of transforms reads or writes, found by compiling them;
/// the decoder must provide slots for all of them.
pub fn referenced_fields(transforms: &[Transform]) -> Result<Vec<String>, TransformError> {
    let mut fields = Vec::new();
    for (index, transform) in transforms.iter().enumerate() {
        let (expression, target) = match kind_of(index, transform)? {
            Kind::Cel { expression, target } => (expression, target),
            Kind::Dedup(dedup) => {
                fields.push(dedup.id_field.clone());
                continue;
            }
        };
        let program = compile(index, expression)?;
        let references = program.references();
        let mut variables: Vec<String> = references
            .variables()
            .into_iter()
            .filter(|v| *v != EVENT_VARIABLE)
            .map(str::to_owned)
            .collect();
        variables.sort();
        fields.extend(variables);
        fields.extend(target.map(str::to_owned));
    }
    Ok(fields)
}

fn compile(index: usize, expression: &str) -> Result<Program, TransformError> {
    Program::compile(expression).map_err(|e| TransformError::Compile {
        index,
        expression: expression.to_owned(),
        message: e.to_string(),
    })
}

impl Transforms {
    /// Compiles `transforms`, with an empty memory for their dedup steps;
    /// `slot` maps a field path to its decoder slot (every field from
    /// [`referenced_fields`] has one).
    pub fn new(
        transforms: &[Transform],
        slot: impl Fn(&str) -> Option<usize>,
    ) -> Result<(Self, DedupMemory), TransformError> {
        let mut steps = Vec::with_capacity(transforms.len());
        let mut memory = DedupMemory::default();
        for (index, transform) in transforms.iter().enumerate() {
            let step = match kind_of(index, transform)? {
                Kind::Dedup(spec) => {
                    memory.dedups.push(Dedup::new(spec));
                    Step::Dedup {
                        slot: slot(&spec.id_field).ok_or_else(|| TransformError::NotDecoded {
                            index,
                            field: spec.id_field.clone(),
                        })?,
                        memory: memory.dedups.len() - 1,
                    }
                }
                Kind::Cel {
                    expression,
                    target: None,
                } => Step::Filter(CelStep::compile(index, expression, &slot)?),
                Kind::Cel {
                    expression,
                    target: Some(field),
                } => Step::Compute {
                    slot: slot(field).ok_or_else(|| TransformError::Compile {
                        index,
                        expression: expression.to_owned(),
                        message: format!("no slot for computed field {field}"),
                    })?,
                    cel: CelStep::compile(index, expression, &slot)?,
                },
            };
            steps.push(step);
        }
        Ok((Self { steps }, memory))
    }

    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Whether a step depends on the events before it (dedup).
    pub fn has_dedup(&self) -> bool {
        self.steps.iter().any(|s| matches!(s, Step::Dedup { .. }))
    }

    /// Applies the transforms to one event's fields (computed fields replace
    /// their slot; computing the event-time field updates `time`). `event` is
    /// the raw event, parsed only when an expression reads `event`. Returns
    /// why a step failed, as a dead-letter reason. `memory` is the one
    /// [`Transforms::new`] returned (or a restored copy).
    pub fn apply<'a>(
        &self,
        event: &[u8],
        fields: &mut [FieldValue<'a>],
        time: &mut i64,
        decoder: &Decoder,
        memory: &mut DedupMemory,
    ) -> Result<Outcome, String> {
        for step in &self.steps {
            match step {
                Step::Dedup { slot, memory: at } => {
                    let dedup = memory.dedups.get_mut(*at).ok_or_else(|| {
                        "dedup: the step has no memory (an engine bug)".to_owned()
                    })?;
                    if dedup.is_duplicate(&fields[*slot], *time)? {
                        return Ok(Outcome::Duplicate);
                    }
                }
                Step::Filter(cel) => match cel.evaluate(event, fields)? {
                    Value::Bool(true) => {}
                    Value::Bool(false) => return Ok(Outcome::Drop),
                    other => {
                        return Err(cel.failed(&format!(
                            "a filter must be true or false, not {:?}",
                            other.type_of()
                        )));
                    }
                },
                Step::Compute { slot, cel } => {
                    let value = cel.evaluate(event, fields)?;
                    fields[*slot] = from_cel(value).map_err(|e| cel.failed(&e))?;
                    if *slot == TIMESTAMP_SLOT {
                        *time = decoder.event_time(&fields[TIMESTAMP_SLOT])?;
                    }
                }
            }
        }
        Ok(Outcome::Keep)
    }
}

impl DedupMemory {
    fn dedups(&self) -> impl Iterator<Item = &Dedup> {
        self.dedups.iter()
    }

    fn dedups_mut(&mut self) -> impl Iterator<Item = &mut Dedup> {
        self.dedups.iter_mut()
    }

    /// Ends an epoch: dedup steps forget ids older than their horizon behind
    /// `clock` (see [`Dedup::expire`]).
    pub fn finish_epoch(&mut self, clock: Clock) {
        for dedup in self.dedups_mut() {
            dedup.expire(clock);
        }
    }

    /// Ids remembered by all dedup steps, for metrics.
    pub fn remembered_ids(&self) -> usize {
        self.dedups().map(Dedup::remembered).sum()
    }

    /// The dedup steps' memory, in transform order, for a checkpoint.
    pub fn snapshot(&self) -> Vec<DedupState> {
        self.dedups().map(Dedup::snapshot).collect()
    }

    /// Restores the dedup steps' memory from a checkpoint. A step whose id
    /// field differs from the checkpoint's (a changed spec) starts empty.
    pub fn restore(&mut self, states: Vec<DedupState>) {
        let mut states = states.into_iter();
        for dedup in self.dedups_mut() {
            match states.next() {
                Some(state) if state.id_field == dedup.id_field() => dedup.restore(state),
                other => {
                    if let Some(state) = other {
                        tracing::warn!(
                            checkpointed = state.id_field,
                            now = dedup.id_field(),
                            "the dedup id field changed: ids seen before are forgotten"
                        );
                    }
                    dedup.restore(DedupState::default());
                }
            }
        }
    }
}

/// A field as a CEL value; `None` for a missing field (an unbound variable).
fn to_cel(value: &FieldValue<'_>) -> Result<Option<Value>, String> {
    Ok(Some(match value {
        FieldValue::Missing => return Ok(None),
        FieldValue::Null => Value::Null,
        FieldValue::Bool(b) => Value::Bool(*b),
        FieldValue::Int(i) => Value::Int(*i),
        FieldValue::Float(f) => Value::Float(*f),
        FieldValue::Str(s) => Value::String(Arc::new(s.to_string())),
        FieldValue::Json(text) => {
            let json: serde_json::Value =
                serde_json::from_str(text).map_err(|e| format!("invalid JSON: {e}"))?;
            let mut context = Context::default();
            context
                .add_variable("v", json)
                .map_err(|e| format!("cannot convert a field: {e}"))?;
            return Program::compile("v")
                .map_err(|e| e.to_string())?
                .execute(&context)
                .map(Some)
                .map_err(|e| e.to_string());
        }
    }))
}

/// A CEL result as a field value.
fn from_cel(value: Value) -> Result<FieldValue<'static>, String> {
    Ok(match value {
        Value::Null => FieldValue::Null,
        Value::Bool(b) => FieldValue::Bool(b),
        Value::Int(i) => FieldValue::Int(i),
        Value::UInt(u) => FieldValue::Int(i64::try_from(u).map_err(|e| e.to_string())?),
        Value::Float(f) => FieldValue::Float(f),
        Value::String(s) => FieldValue::Str(Cow::Owned(s.to_string())),
        other => {
            let json = other
                .json()
                .map_err(|e| format!("cannot store a {:?}: {e:?}", other.type_of()))?;
            FieldValue::Json(Cow::Owned(json.to_string()))
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn transforms(json: serde_json::Value) -> ((Transforms, DedupMemory), Decoder) {
        let specs: Vec<Transform> = serde_json::from_value(json).unwrap();
        let format = serde_json::from_value(serde_json::json!({})).unwrap();
        let decoder = Decoder::new(&format, referenced_fields(&specs).unwrap());
        let transforms = Transforms::new(&specs, |path| decoder.slot(path)).unwrap();
        (transforms, decoder)
    }

    fn apply(
        (t, memory): &mut (Transforms, DedupMemory),
        decoder: &Decoder,
        event: &str,
    ) -> Result<Outcome, String> {
        let mut values = Vec::new();
        let mut time = decoder.decode(event.as_bytes(), &mut values).unwrap();
        t.apply(event.as_bytes(), &mut values, &mut time, decoder, memory)
    }

    #[test]
    fn dedup_sees_only_what_earlier_steps_keep_and_its_memory_survives_a_restore() {
        let steps = serde_json::json!([
            {"filter": "event_type != 'heartbeat'"},
            {"dedup": {"idField": "user.id", "horizon": "10m"}},
        ]);
        let (mut t, decoder) = transforms(steps.clone());
        let event = |id: &str, event_type: &str| {
            format!(
                r#"{{"timestamp":"2026-11-24T10:00:00Z","event_type":"{event_type}","user":{{"id":{id}}}}}"#
            )
        };
        assert_eq!(
            apply(&mut t, &decoder, &event("1", "heartbeat")),
            Ok(Outcome::Drop)
        );
        assert_eq!(
            apply(&mut t, &decoder, &event("1", "view")),
            Ok(Outcome::Keep)
        );
        assert_eq!(
            apply(&mut t, &decoder, &event("1", "click")),
            Ok(Outcome::Duplicate)
        );
        assert_eq!(
            apply(&mut t, &decoder, &event("\"1\"", "view")),
            Ok(Outcome::Keep)
        );
        let no_id = r#"{"timestamp":"2026-11-24T10:00:00Z","event_type":"view"}"#;
        assert_eq!(
            apply(&mut t, &decoder, no_id),
            Err("dedup: the id field user.id is missing".into())
        );

        let (mut restored, _) = transforms(steps);
        restored.1.restore(t.1.snapshot());
        assert_eq!(restored.1.remembered_ids(), 2);
        assert_eq!(
            apply(&mut restored, &decoder, &event("1", "view")),
            Ok(Outcome::Duplicate)
        );
        // A checkpoint of another id field is not used.
        let (mut other, decoder) = transforms(serde_json::json!([
            {"dedup": {"idField": "event_type", "horizon": "10m"}},
        ]));
        other.1.restore(t.1.snapshot());
        assert_eq!(other.1.remembered_ids(), 0);
        assert_eq!(
            apply(&mut other, &decoder, &event("1", "view")),
            Ok(Outcome::Keep)
        );
    }
}
