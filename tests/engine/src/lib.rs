//! Engine test harness.
