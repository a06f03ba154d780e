//! Validation of payloads before they are copied: well-formed JSON, a JSON Schema, a maximum
//! record size. A record that fails is a poison record: the route's `on_error` action
//! (skip, dead_letter, stop) decides what happens to it, never a crash.

use std::sync::Arc;

use super::filter::RecordView;

#[derive(Clone, Default)]
pub struct Validation {
    pub json: bool,
    pub schema: Option<(String, Arc<jsonschema::Validator>)>,
    pub max_record_bytes: Option<u64>,
}

impl std::fmt::Debug for Validation {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Validation")
            .field("json", &self.json)
            .field("schema", &self.schema.as_ref().map(|(p, _)| p))
            .field("max_record_bytes", &self.max_record_bytes)
            .finish()
    }
}

impl Validation {
    pub fn is_empty(&self) -> bool {
        !self.json && self.schema.is_none() && self.max_record_bytes.is_none()
    }

    /// Why the record is invalid, or Ok. Null payloads (tombstones) are valid: they carry
    /// no document to check.
    pub fn check(&self, r: &RecordView<'_>, size: u64) -> Result<(), String> {
        if let Some(max) = self.max_record_bytes {
            if size > max {
                return Err(format!(
                    "record is {size} bytes, over max_record_bytes = {max}"
                ));
            }
        }
        if self.json || self.schema.is_some() {
            let doc = r.json().map_err(str::to_string)?;
            if let (Some(doc), Some((path, schema))) = (doc, &self.schema) {
                if let Some(e) = schema.iter_errors(doc).next() {
                    return Err(format!(
                        "payload violates schema {path}: {e} (at {})",
                        e.instance_path()
                    ));
                }
            }
        }
        Ok(())
    }
}
