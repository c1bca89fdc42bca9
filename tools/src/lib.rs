//! Shared code of ringpost's load tools.
