//! What a role change is doing right now, for hastctl's "still in progress" answers.

use std::sync::Mutex;

/// What a running transition is doing, for "role change still in progress: …" replies.
#[derive(Debug, Default)]
pub struct Progress(Mutex<String>);

impl Progress {
    /// Records the current step.
    pub fn set(&self, step: impl Into<String>) {
        if let Ok(mut s) = self.0.lock() {
            *s = step.into();
        }
    }

    /// The current step.
    pub fn get(&self) -> String {
        self.0.lock().map(|s| s.clone()).unwrap_or_default()
    }
}
