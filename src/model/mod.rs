//! The model: configuration, weights, and the forward passes.

pub mod config;
