//! The `aws` backend: being written (its feature is not in any default set yet).
