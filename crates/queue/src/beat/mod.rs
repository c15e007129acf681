//! Beat scheduler (placeholder: being built).
