//! QEMU driver.
