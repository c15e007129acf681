//! Celery-compatible task queue (placeholder: being built).

pub mod beat;
