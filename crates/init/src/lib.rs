//! Guest PID 1.
