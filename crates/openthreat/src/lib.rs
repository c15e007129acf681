//! OpenThreat application library.
